/*
 * A bare-metal secondary VM (runs in its own stage-2 address space at GSIM_VM_IPA_BASE).
 * Prints TAP on its emulated PL011, checks its hypercalls, checks that an access outside its
 * memory faults inside the VM (an abort delivered to its EL1), then powers off through PSCI.
 */
#include "lib.h"

static volatile u64 faults, fault_esr;

/* Called from start.S's EL1 vector: skip the faulting instruction and carry on. */
int payload_fault(u64 esr, u64 elr, u64 far)
{
	(void)far;
	faults++;
	fault_esr = esr;
	__asm__ volatile("msr elr_el1, %0" : : "r"(elr + 4));
	return 1;
}

static volatile u64 secondary_done;

void secondary_main(u64 context)
{
	if (hvc(0x80000000ull, 0, 0, 0, 0, 0).x0 == 0x10001 && context == 1)
		secondary_done = 1;
	__asm__ volatile("dsb sy");
}

extern char payload_secondary[];

void payload_main(u64 dtb)
{
	tap_begin("vm");
	expect_eq("VM runs at EL1", read_current_el(), 1);
	expect_eq("x0 is the DTB address the VMM configured", dtb, GSIM_VM_IPA_BASE + 0x100000);
	expect_eq("SMCCC_VERSION from inside the VM", hvc(0x80000000ull, 0, 0, 0, 0, 0).x0, 0x10001);
	ok((u32)hvc(0x8600ff01ull, 0, 0, 0, 0, 0).x0 != 0xffffffffu, "the VM sees Gunyah's UID");
	expect_eq("PSCI_VERSION (the hypervisor's own PSCI for VMs)",
		  hvc(0x84000000ull, 0, 0, 0, 0, 0).x0, 0x10001);
	volatile u64 *outside = (volatile u64 *)0x40000000ull;   /* the primary's RAM */
	u64 v = *outside;
	(void)v;
	expect_eq("a read outside the VM's memory faults inside the VM", faults, 1);
	expect_eq("...as a synchronous external data abort", (fault_esr >> 26) & 0x3f, 0x25);
	*outside = 0x5555;
	expect_eq("a write outside the VM's memory faults too", faults, 2);
	/* A second vCPU exists only if the VM's DT listed two CPUs. */
	u64 on = hvc(0xc4000003ull, 1, (u64)payload_secondary, 1, 0, 0).x0;
	if (on == 0) {
		for (u64 i = 0; i < 100000000 && !secondary_done; i++)
			__asm__ volatile("yield");
		expect_eq("the second vCPU ran (CPU_ON through the hypervisor's PSCI)", secondary_done, 1);
	} else {
		expect_eq("CPU_ON of a vCPU the VM does not have: INVALID_PARAMETERS", on, (u64)-2);
	}
	tap_end();
	/* Stay up for 300 ms, so that the VMM's "while the VM runs" checks see it running. */
	u64 freq, t0, t;
	__asm__ volatile("mrs %0, cntfrq_el0; isb; mrs %1, cntvct_el0" : "=r"(freq), "=r"(t0));
	do
		__asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(t));
	while (t - t0 < freq * 3 / 10);
	puts_("VM-HELLO-DONE\n");
}
