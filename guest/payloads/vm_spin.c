/*
 * A secondary VM that never traps: it counts in its own memory forever.  Only the hypervisor's
 * kick can take it off its CPU; suite_vm.c checks that VM_STOP really stops it (the counter,
 * read by the VMM after reclaiming the memory, no longer moves).
 */
#include "lib.h"

#define COUNTER_OFFSET 0x180000ull

void secondary_main(u64 context) { (void)context; }

void payload_main(u64 dtb)
{
	(void)dtb;
	volatile u64 *counter = (volatile u64 *)(GSIM_VM_IPA_BASE + COUNTER_OFFSET);
	puts_("spinning without traps\n");
	for (;;)
		*counter = *counter + 1;
}
