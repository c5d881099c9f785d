/*
 * Conformance suite "vm": this payload is the primary VM's VMM.  Through real RM calls over the
 * message queues it allocates VMIDs, lends the memory that holds each VM's image and DTB
 * (put there by the host: GSIM_VM_A_PA / GSIM_VM_B_PA), configures, initialises and starts
 * the VMs, checks that lent memory is gone from its own address space (a stage-2 abort), waits
 * for the VMs' exit notifications, and reclaims the memory.  VM A has 1 vCPU, VM B has 2;
 * both run at once on CPUs the primary does not see.  The VMs report their own TAP on their
 * consoles (vm_hello.c).
 */
#include "rm_client.h"

#define VM_SIZE 0x200000ull
#define DTB_OFFSET 0x100000ull

static volatile u64 faults;
static volatile u64 fault_far;

int payload_fault(u64 esr, u64 elr, u64 far)
{
	(void)esr;
	faults++;
	fault_far = far;
	__asm__ volatile("msr elr_el1, %0" : : "r"(elr + 4));   /* skip the access */
	return 1;
}

void secondary_main(u64 context) { (void)context; }

static void sleep_ms(u64 ms)
{
	u64 freq, t0, t;
	__asm__ volatile("mrs %0, cntfrq_el0; isb; mrs %1, cntvct_el0" : "=r"(freq), "=r"(t0));
	do
		__asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(t));
	while (t - t0 < freq / 1000 * ms);
}

struct vm { struct rm_vm rm; u32 first_word; };

static unsigned char req[8], rep[8];
static u32 rep_len;

static int create_vm(struct vm *vm, u32 label)
{
	vm->first_word = *(volatile u32 *)vm->rm.pa;
	return rm_vm_prepare(&vm->rm, label, DTB_OFFSET, DTB_OFFSET, 0x1000);
}

static void reclaim(struct vm *vm)
{
	expect_eq("MEM_RECLAIM after the VM exited", rm_mem_reclaim(vm->rm.handle), 0);
	u64 before = faults;
	u32 word = *(volatile u32 *)vm->rm.pa;
	ok(faults == before && word == vm->first_word,
	   "reclaimed memory is the primary's again (no fault, the image is still there)");
}

void payload_main(u64 dtb)
{
	(void)dtb;
	tap_begin("vm");
	rm_init();
	struct vm a = { { GSIM_VM_A_PA, VM_SIZE, 0, 0 }, 0 }, b = { { GSIM_VM_B_PA, VM_SIZE, 0, 0 }, 0 };

	u32 err = rm_call(RM_VM_GET_VMID, req, params()->abi == 6 ? 4 : 0, rep, &rep_len);
	ok(err == 0 && (rep[0] | rep[1] << 8) == 3, "VM_GET_VMID: the primary is VMID 3");
	if (!create_vm(&a, 1) || !create_vm(&b, 2)) {
		tap_end();
		return;
	}
	ok(a.rm.vmid != b.rm.vmid, "two VMs get different VMIDs");
	expect_eq("VM_START of VM A (1 vCPU)", rm_vmid_call(RM_VM_START, a.rm.vmid), 0);
	expect_eq("VM_START of VM B (2 vCPUs)", rm_vmid_call(RM_VM_START, b.rm.vmid), 0);
	expect_eq("VM_START again is refused (wrong state)", rm_vmid_call(RM_VM_START, a.rm.vmid) != 0, 1);
	static unsigned char res[256];
	u32 res_len = 0;
	memset(req, 0, 4);
	put_u16(req, b.rm.vmid);
	err = rm_call(0x56000020u, req, 4, res, &res_len);     /* VM_GET_HYP_RESOURCES */
	ok(err == 0 && res_len == 4 + 2 * 44 && get_u32(res) == 2 && res[4] == 4 && res[48] == 4 &&
	   get_u16(res + 6) == b.rm.vmid,
	   "VM_GET_HYP_RESOURCES of VM B: its two vCPUs, as capabilities");

	u64 before = faults;
	u32 v = *(volatile u32 *)(a.rm.pa + 0x1000);
	(void)v;
	ok(faults == before + 1 && fault_far == a.rm.pa + 0x1000,
	   "reading memory lent to a VM faults in the primary (stage 2)");
	*(volatile u32 *)(b.rm.pa + 0x2000) = 0xdead;
	ok(faults == before + 2, "writing memory lent to a VM faults too");

	ok(rm_mem_reclaim(a.rm.handle) != 0, "MEM_RECLAIM while the VM runs is refused");

	ok(rm_wait_notification(RM_NOTIF_VM_EXITED, a.rm.vmid, 400), "VM_EXITED notification for VM A");
	ok(rm_wait_notification(RM_NOTIF_VM_EXITED, b.rm.vmid, 400), "VM_EXITED notification for VM B");
	reclaim(&a);
	reclaim(&b);

	/* VM C never traps (vm_spin.c): VM_STOP must still take it off its CPU. */
	struct vm c = { { GSIM_VM_C_PA, VM_SIZE, 0, 0 }, 0 };
	volatile u64 *counter = (volatile u64 *)(GSIM_VM_C_PA + 0x180000);
	*counter = 0;
	if (create_vm(&c, 3)) {
		expect_eq("VM_START of VM C (never traps)", rm_vmid_call(RM_VM_START, c.rm.vmid), 0);
		sleep_ms(500);                          /* let it count for a while */
		expect_eq("VM_STOP of the running VM C", rm_vmid_call(RM_VM_STOP, c.rm.vmid), 0);
		ok(rm_wait_notification(RM_NOTIF_VM_EXITED, c.rm.vmid, 400),
		   "VM_EXITED notification for the stopped VM C");
		reclaim(&c);
		u64 first = *counter;
		sleep_ms(100);
		ok(first > 0 && *counter == first,
		   "VM C ran, and after VM_STOP it no longer runs (its counter stands still)");
		diag("VM C counted to", first);
	}
	ok(rm_rx_interrupts() > 0, "RM replies arrived with RX interrupts through the GIC");
	tap_end();
}
