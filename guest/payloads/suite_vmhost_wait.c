/*
 * Primary-side helper for VM tests that start the VM from the host: it waits (without
 * hypercalls) until the hypervisor raises the RM RX interrupt, then powers off.
 */
#include "lib.h"

void secondary_main(u64 context) { (void)context; }

void payload_main(u64 dtb)
{
	(void)dtb;
	gic_init();
	gic_enable_spi(GSIM_RM_RX_SPI);
	tap_begin("vmhost-wait");
	u32 intid = gic_poll(4000000000ull);
	expect_eq("RM RX interrupt raised while no call was in flight", intid, 32 + GSIM_RM_RX_SPI);
	tap_end();
}
