/*
 * Primary-side VMM for a Linux secondary VM, through the RM as the v6 drivers do it: the host
 * put Debian's kernel at the start of GSIM_LINUX_VM_PA, the VM's DTB at +64 MiB and its
 * initramfs at +65 MiB; this payload lends the 128 MiB, configures, initialises and starts
 * the VM, keeps running while the VM boots, and waits for its VM_EXITED notification.
 */
#include "rm_client.h"

#define DTB_OFFSET (64ull << 20)

void secondary_main(u64 context) { (void)context; }

void payload_main(u64 dtb)
{
	(void)dtb;
	tap_begin("vmlinux");
	rm_init();
	struct rm_vm vm = { GSIM_LINUX_VM_PA, GSIM_LINUX_VM_SIZE, 0, 0 };
	if (rm_vm_prepare(&vm, 0x11, DTB_OFFSET, DTB_OFFSET, 0x10000)) {
		expect_eq("VM_START of the Linux VM", rm_vmid_call(RM_VM_START, vm.vmid), 0);
		u64 rounds = 0;
		while (!rm_wait_notification(RM_NOTIF_VM_EXITED, vm.vmid, 50) && rounds < 4000)
			rounds++;                        /* the primary keeps running meanwhile */
		ok(rounds < 4000, "VM_EXITED notification: the Linux VM powered off");
		expect_eq("MEM_RECLAIM of its memory", rm_mem_reclaim(vm.handle), 0);
	}
	tap_end();
}
