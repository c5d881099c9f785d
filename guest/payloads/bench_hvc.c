/*
 * Benchmark payload: the cost of one trapped call.  Under gunyah-sim it runs at EL1 and makes
 * HVC SMCCC_VERSION calls (answered by Python); under plain QEMU (no shim, started at EL2) it
 * makes SMC PSCI_VERSION calls that QEMU answers in-process: the baseline.  It times batches
 * of calls with the virtual counter and prints them; the host also times each exit.
 * With BENCH_BLOCKS, 1000 distinct translation blocks run between calls, as a real kernel
 * would run lots of code between hypercalls (this is where a gdbstub stop's full
 * translation-cache flush shows).
 */
#include "lib.h"

#ifndef BENCH_BLOCKS
#define BENCH_BLOCKS 0
#endif
#define CALLS 2000
#define BATCH 50

static inline u64 cntvct(void)
{
	u64 v;
	__asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
	return v;
}

static inline void one_call(int at_el2)
{
	if (at_el2)
		smc(0x84000000ull, 0, 0, 0);             /* PSCI_VERSION: QEMU answers in-process */
	else
		hvc(0x80000000ull, 0, 0, 0, 0, 0);       /* SMCCC_VERSION: trapped to Python */
#if BENCH_BLOCKS
	__asm__ volatile(".rept 1000\n\tb .+4\n\t.endr" ::: "memory");
#endif
}

void secondary_main(u64 context) { (void)context; }

void payload_main(u64 dtb)
{
	(void)dtb;
	int at_el2 = read_current_el() == 2;
	u64 freq;
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(freq));
	for (int i = 0; i < 20; i++)                    /* warm up the translation cache */
		one_call(at_el2);
	puts_("BENCH mode=");
	puts_(at_el2 ? "qemu-smc" : "trapped-hvc");
	puts_(" blocks=");
	putdec(BENCH_BLOCKS);
	puts_(" freq=");
	putdec(freq);
	puts_(" batch=");
	putdec(BATCH);
	puts_("\nBENCH ticks:");
	for (int b = 0; b < CALLS / BATCH; b++) {
		u64 t0 = cntvct();
		for (int i = 0; i < BATCH; i++)
			one_call(at_el2);
		u64 t1 = cntvct();
		putc_(' ');
		putdec(t1 - t0);
	}
	puts_("\nBENCH done\n");
}
