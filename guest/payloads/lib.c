#include "lib.h"

#define UART_DR 0x00
#define UART_FR 0x18
#define UART_FR_TXFF (1u << 5)

static inline void mmio_w32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_r32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_w64(u64 addr, u64 v) { *(volatile u64 *)addr = v; }

struct smccc_res hvc(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
	register u64 x0 __asm__("x0") = fid, x1 __asm__("x1") = a1, x2 __asm__("x2") = a2;
	register u64 x3 __asm__("x3") = a3, x4 __asm__("x4") = a4, x5 __asm__("x5") = a5;
	__asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3), "+r"(x4), "+r"(x5)
			 : : "memory");
	return (struct smccc_res){ x0, x1, x2, x3 };
}

struct smccc_res smc(u64 fid, u64 a1, u64 a2, u64 a3)
{
	register u64 x0 __asm__("x0") = fid, x1 __asm__("x1") = a1, x2 __asm__("x2") = a2;
	register u64 x3 __asm__("x3") = a3;
	__asm__ volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory");
	return (struct smccc_res){ x0, x1, x2, x3 };
}

const struct gsim_params *params(void)
{
	/* Under plain QEMU (benchmark baselines) no host wrote the block: use virt's layout. */
	static const struct gsim_params plain_virt = {
		.magic = 0, .abi = 17, .ncpus = 1, .gicd = 0x08000000, .gicr = 0x080a0000,
		.uart = 0x09000000,
	};
#ifdef GSIM_VM
	return &plain_virt;      /* inside a VM: only its own memory and emulated devices */
#else
	const struct gsim_params *p = (const struct gsim_params *)GSIM_PARAMS_ADDR;
	return p->magic == GSIM_PARAMS_MAGIC ? p : &plain_virt;
#endif
}

void *memset(void *d, int c, unsigned long n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

void putc_(char c)
{
	u64 uart = params()->uart;
	if (c == '\n')
		putc_('\r');
	while (mmio_r32(uart + UART_FR) & UART_FR_TXFF)
		;
	mmio_w32(uart + UART_DR, (u32)c);
}

void puts_(const char *s)
{
	while (*s)
		putc_(*s++);
}

void puthex(u64 v)
{
	puts_("0x");
	for (int shift = 60; shift >= 0; shift -= 4)
		putc_("0123456789abcdef"[(v >> shift) & 0xf]);
}

void putdec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_(&buf[i]);
}

static u64 tap_count, tap_failed;

void tap_begin(const char *suite)
{
	puts_("TAP version 13\n# suite: ");
	puts_(suite);
	puts_(params()->abi == 6 ? " (abi v6)\n" : " (abi v17)\n");
}

int ok(int cond, const char *desc)
{
	tap_count++;
	if (!cond)
		tap_failed++;
	puts_(cond ? "ok " : "not ok ");
	putdec(tap_count);
	puts_(" - ");
	puts_(desc);
	putc_('\n');
	return cond;
}

void skip(const char *desc, const char *why)
{
	tap_count++;
	puts_("ok ");
	putdec(tap_count);
	puts_(" - ");
	puts_(desc);
	puts_(" # SKIP ");
	puts_(why);
	putc_('\n');
}

void diag(const char *msg, u64 value)
{
	puts_("# ");
	puts_(msg);
	puts_(": ");
	puthex(value);
	putc_('\n');
}

int expect_eq(const char *desc, u64 got, u64 want)
{
	int good = ok(got == want, desc);
	if (!good) {
		diag("got", got);
		diag("expected", want);
	}
	return good;
}

void tap_end(void)
{
	puts_("1..");
	putdec(tap_count);
	putc_('\n');
	puts_(tap_failed ? "# FAILED " : "# PASSED ");
	putdec(tap_count - tap_failed);
	puts_("/");
	putdec(tap_count);
	putc_('\n');
}

__attribute__((weak)) int payload_fault(u64 esr, u64 elr, u64 far)
{
	puts_("not ok - unexpected exception at EL1\n");
	diag("ESR_EL1", esr);
	diag("ELR_EL1", elr);
	diag("FAR_EL1", far);
	puts_("Bail out! exception\n");
	return 0;
}

/* --- GICv3 ---------------------------------------------------------------------------------- */
#define GICD_CTLR 0x0000
#define GICD_IGROUPR 0x0080
#define GICD_ISENABLER 0x0100
#define GICD_ICPENDR 0x0280
#define GICD_IPRIORITYR 0x0400
#define GICD_ICFGR 0x0C00
#define GICD_IROUTER 0x6000
#define GICR_WAKER 0x0014

void gic_init(void)
{
	u64 gicd = params()->gicd, gicr = params()->gicr;
	mmio_w32(gicd + GICD_CTLR, (1u << 4) | (1u << 1) | 1u);   /* ARE, Grp1, Grp0 (DS=1) */
	mmio_w32(gicr + GICR_WAKER, mmio_r32(gicr + GICR_WAKER) & ~(1u << 1));
	while (mmio_r32(gicr + GICR_WAKER) & (1u << 2))
		;
	u64 sre;
	__asm__ volatile("mrs %0, S3_0_C12_C12_5" : "=r"(sre));          /* ICC_SRE_EL1 */
	__asm__ volatile("msr S3_0_C12_C12_5, %0; isb" : : "r"(sre | 1));
	__asm__ volatile("msr S3_0_C4_C6_0, %0" : : "r"((u64)0xff));      /* ICC_PMR_EL1 */
	__asm__ volatile("msr S3_0_C12_C12_7, %0; isb" : : "r"((u64)1));  /* ICC_IGRPEN1_EL1 */
}

void gic_enable_spi(u32 spi)
{
	u64 gicd = params()->gicd;
	u32 intid = 32 + spi;
	u64 reg = gicd + GICD_IGROUPR + 4 * (intid / 32);
	mmio_w32(reg, mmio_r32(reg) | (1u << (intid % 32)));
	reg = gicd + GICD_ICFGR + 4 * (intid / 16);                       /* edge-triggered */
	mmio_w32(reg, mmio_r32(reg) | (2u << (2 * (intid % 16))));
	reg = gicd + GICD_IPRIORITYR + (intid & ~3u);
	u32 shift = 8 * (intid & 3);
	mmio_w32(reg, (mmio_r32(reg) & ~(0xffu << shift)) | (0x80u << shift));
	mmio_w64(gicd + GICD_IROUTER + 8 * intid, 0);                     /* to CPU 0 */
	mmio_w32(gicd + GICD_ICPENDR + 4 * (intid / 32), 1u << (intid % 32));
	mmio_w32(gicd + GICD_ISENABLER + 4 * (intid / 32), 1u << (intid % 32));
}

u32 gic_poll(u64 spins)
{
	for (u64 i = 0; i < spins; i++) {
		u64 iar;
		__asm__ volatile("mrs %0, S3_0_C12_C12_0" : "=r"(iar));   /* ICC_IAR1_EL1 */
		u32 intid = (u32)(iar & 0xffffff);
		if (intid < 1020) {
			__asm__ volatile("msr S3_0_C12_C12_1, %0; isb" : : "r"(iar)); /* EOIR1 */
			return intid;
		}
	}
	return 1023;
}

void gic_drain(void)
{
	while (gic_poll(1000) != 1023)
		;
}
