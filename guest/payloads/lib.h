/* Small runtime for the bare-metal conformance payloads: UART, TAP, SMCCC calls, GICv3. */
#ifndef GSIM_LIB_H
#define GSIM_LIB_H

#include <stdint.h>
#include "gsim_params.h"     /* generated from the Python side: addresses, capability IDs */

typedef uint64_t u64;
typedef uint32_t u32;
typedef uint16_t u16;

struct smccc_res { u64 x0, x1, x2, x3; };

struct smccc_res hvc(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
struct smccc_res smc(u64 fid, u64 a1, u64 a2, u64 a3);
u64 preserved_regs_after_hvc(u64 fid);
void system_off(void) __attribute__((noreturn));

/* The block the host writes before starting the payload (qemu_bridge/mailbox.py). */
struct gsim_params {
	u64 magic;
	u64 abi;             /* 6 or 17: the Linux driver generation being served */
	u64 ncpus;
	u64 gicd;
	u64 gicr;
	u64 uart;
};
const struct gsim_params *params(void);

void putc_(char c);
void puts_(const char *s);
void puthex(u64 v);
void putdec(u64 v);

/* TAP: the plan is printed at the end ("1..N"), which TAP allows. */
void tap_begin(const char *suite);
int ok(int cond, const char *desc);
void skip(const char *desc, const char *why);
int expect_eq(const char *desc, u64 got, u64 want);
void diag(const char *msg, u64 value);
void tap_end(void);

/* GICv3 as an EL1 guest uses it, polled through ICC_IAR1_EL1 with PSTATE.I masked. */
void gic_init(void);
void gic_enable_spi(u32 spi);
u32 gic_poll(u64 spins);          /* the next INTID, or 1023 when none arrived */
void gic_drain(void);

void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);

static inline u64 read_current_el(void)
{
	u64 v;
	__asm__ volatile("mrs %0, CurrentEL" : "=r"(v));
	return (v >> 2) & 3;
}

#define SMCCC_NOT_SUPPORTED ((u64)-1)

#endif
