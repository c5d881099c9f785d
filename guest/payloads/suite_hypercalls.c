/*
 * Conformance suite "hypercalls": SMCCC, PSCI and Gunyah identification as a guest sees them.
 * Expected values are the ABI facts of docs/abi.md, written here independently of the Python
 * tables, so that a wrong table row fails these tests.
 */
#include "lib.h"

#define SMCCC_VERSION 0x80000000ull
#define SMCCC_ARCH_FEATURES 0x80000001ull
#define SMCCC_ARCH_WORKAROUND_1 0x80008000ull
#define SMCCC_ARCH_WORKAROUND_2 0x80007fffull
#define SMCCC_ARCH_WORKAROUND_3 0x80003fffull
#define PSCI_VERSION 0x84000000ull
#define PSCI_CPU_ON 0xc4000003ull
#define PSCI_AFFINITY_INFO 0xc4000004ull
#define PSCI_FEATURES 0x8400000aull
#define VENDOR_HYP_UID 0x8600ff01ull
#define VENDOR_HYP_REVISION 0x8600ff03ull
#define GUNYAH_HYP_IDENTIFY 0xc6008000ull

static volatile u64 secondary_ran;
static volatile u64 secondary_el;
static volatile u64 secondary_context;
extern char payload_secondary[];

void secondary_main(u64 context)
{
	secondary_context = context;
	secondary_el = read_current_el();
	/* The secondary's own HVC traps through its own mailbox. */
	secondary_ran = hvc(SMCCC_VERSION, 0, 0, 0, 0, 0).x0 == 0x10001 ? 1 : 2;
	__asm__ volatile("dsb sy; sev");
}

static void uid_tests(void)
{
	/* v6 compares four u32 words; v17 reassembles UUID c1d58fcd-a453-5fdb-9265-ce36673d5f14. */
	static const u32 v6[4] = { 0x673d5f14, 0x9265ce36, 0xa4535fdb, 0xc1d58fcd };
	static const u32 v17[4] = { 0xcd8fd5c1, 0xdb5f53a4, 0x36ce6592, 0x145f3d67 };
	const u32 *want = params()->abi == 6 ? v6 : v17;
	struct smccc_res r = hvc(VENDOR_HYP_UID, 0, 0, 0, 0, 0);
	int good = (u32)r.x0 == want[0] && (u32)r.x1 == want[1] && (u32)r.x2 == want[2] &&
		   (u32)r.x3 == want[3];
	if (!ok(good, "vendor hypervisor UID (HVC) is Gunyah's, encoded for this driver generation")) {
		diag("x0", r.x0); diag("x1", r.x1); diag("x2", r.x2); diag("x3", r.x3);
	}
	r = smc(VENDOR_HYP_UID, 0, 0, 0);
	ok((u32)r.x0 == want[0] && (u32)r.x3 == want[3],
	   "vendor hypervisor UID through SMC (v17 uses the PSCI conduit) gives the same answer");
	r = hvc(0x8500ff01ull, 0, 0, 0, 0, 0);
	ok((u32)r.x0 == want[0] && (u32)r.x3 == want[3],
	   "standard-hypervisor CALL_UID (0x8500FF01) answers the same UID");
	r = hvc(VENDOR_HYP_REVISION, 0, 0, 0, 0, 0);
	expect_eq("REVISION answers hyp_identify's api_info",
		  r.x0, hvc(GUNYAH_HYP_IDENTIFY, 0, 0, 0, 0, 0).x0);
}

static void identify_tests(void)
{
	struct smccc_res r = hvc(GUNYAH_HYP_IDENTIFY, 0, 0, 0, 0, 0);
	expect_eq("hyp_identify: API version 1 (v17 refuses anything else)", r.x0 & 0x3fff, 1);
	ok(r.x0 & (1ull << 15), "hyp_identify: 64-bit flag set");
	ok(!(r.x0 & (1ull << 14)), "hyp_identify: little endian");
	expect_eq("hyp_identify: variant GUNYAH (0x48)", r.x0 >> 56, 0x48);
	ok(r.x1 & (1ull << 2), "hyp_identify: message queue feature flag set");
	expect_eq("hyp_identify: flags2 is zero", r.x3, 0);
}

static void smccc_tests(void)
{
	expect_eq("SMCCC_VERSION over HVC is 1.1", hvc(SMCCC_VERSION, 0, 0, 0, 0, 0).x0, 0x10001);
	expect_eq("SMCCC_VERSION over SMC is 1.1", smc(SMCCC_VERSION, 0, 0, 0).x0, 0x10001);
	expect_eq("SMCCC_VERSION ignores the upper 32 bits of an SMC32 ID",
		  hvc(0xffffffff00000000ull | SMCCC_VERSION, 0, 0, 0, 0, 0).x0, 0x10001);
	expect_eq("ARCH_FEATURES(SMCCC_VERSION) is supported",
		  hvc(SMCCC_ARCH_FEATURES, SMCCC_VERSION, 0, 0, 0, 0).x0, 0);
	u64 w1 = hvc(SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, 0, 0, 0, 0).x0;
	u64 w2 = hvc(SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_2, 0, 0, 0, 0).x0;
	u64 w3 = hvc(SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_3, 0, 0, 0, 0).x0;
	ok(w1 == SMCCC_NOT_SUPPORTED && w2 == SMCCC_NOT_SUPPORTED && w3 == SMCCC_NOT_SUPPORTED,
	   "Spectre workaround calls are not advertised");
	struct smccc_res r = hvc(0xc600beefull, 0x11, 0x22, 0x33, 0, 0);
	ok(r.x0 == SMCCC_NOT_SUPPORTED && r.x1 == 0x11 && r.x2 == 0x22 && r.x3 == 0x33,
	   "unknown Gunyah hypercall: NOT_SUPPORTED, other registers untouched");
	expect_eq("unknown standard-service call: NOT_SUPPORTED",
		  smc(0x8400ff00ull, 0, 0, 0).x0, SMCCC_NOT_SUPPORTED);
	expect_eq("an HVC preserves x8..x17 (count of clobbered registers)",
		  preserved_regs_after_hvc(SMCCC_VERSION), 0);
	expect_eq("an HVC that fails preserves x8..x17 too",
		  preserved_regs_after_hvc(0xc600beefull), 0);
}

static void psci_tests(void)
{
	u64 v = smc(PSCI_VERSION, 0, 0, 0).x0;
	ok(v >= 0x10000 && v < 0x20000, "PSCI_VERSION (forwarded to firmware) is 1.x");
	expect_eq("PSCI_FEATURES(SMCCC_VERSION) reports SMCCC 1.1 support",
		  smc(PSCI_FEATURES, SMCCC_VERSION, 0, 0).x0, 0);
	expect_eq("PSCI_FEATURES(CPU_ON) is supported", smc(PSCI_FEATURES, PSCI_CPU_ON, 0, 0).x0, 0);
	if (params()->ncpus < 2) {
		skip("PSCI CPU_ON of CPU 1", "needs --smp 2");
		return;
	}
	u64 r = smc(PSCI_CPU_ON, 1, (u64)payload_secondary, 0x5eed).x0;
	expect_eq("PSCI CPU_ON of CPU 1 succeeds", r, 0);
	for (u64 i = 0; i < 200000000 && !secondary_ran; i++)
		__asm__ volatile("yield");
	expect_eq("CPU 1 ran our code, and its HVC was answered", secondary_ran, 1);
	expect_eq("CPU 1 entered at EL1 (the shim set up EL2 for it)", secondary_el, 1);
	expect_eq("CPU 1 got the CPU_ON context in x0", secondary_context, 0x5eed);
	u64 state = 0;
	for (u64 i = 0; i < 100000; i++) {        /* it turns itself off after its call */
		state = smc(PSCI_AFFINITY_INFO, 1, 0, 0).x0;
		if (state == 1)
			break;
	}
	expect_eq("AFFINITY_INFO(CPU 1) is OFF after its CPU_OFF", state, 1);
}

void payload_main(u64 dtb)
{
	tap_begin("hypercalls");
	expect_eq("payload runs at EL1", read_current_el(), 1);
	ok(params()->magic == GSIM_PARAMS_MAGIC, "host parameter block present");
	ok(dtb != 0 && *(volatile u32 *)dtb == 0xedfe0dd0, "x0 points at a DTB");
	smccc_tests();
	uid_tests();
	identify_tests();
	psci_tests();
	tap_end();
}
