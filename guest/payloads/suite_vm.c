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

static void put_u16(unsigned char *p, u16 v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static void put_u32(unsigned char *p, u32 v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64(unsigned char *p, u64 v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static u32 get_u32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static unsigned char req[256], rep[256];
static u32 rep_len;

static u32 vmid_call(u32 msg_id, u16 vmid)
{
	memset(req, 0, 8);
	put_u16(req, vmid);
	return rm_call(msg_id, req, msg_id == RM_VM_STOP ? 8 : 4, rep, &rep_len);
}

struct vm { const char *name; u64 pa; u16 vmid; u32 handle; u32 first_word; };

static int create_vm(struct vm *vm, u32 label)
{
	memset(req, 0, 4);
	u32 err = rm_call(RM_VM_ALLOC_VMID, req, 4, rep, &rep_len);
	vm->vmid = (u16)(rep[0] | rep[1] << 8);
	if (!ok(err == 0 && rep_len >= 2 && vm->vmid != 0, "VM_ALLOC_VMID gives a dynamic VMID")) {
		diag("error", err);
		return 0;
	}
	vm->first_word = *(volatile u32 *)vm->pa;
	/* MEM_LEND: type normal, no flags, label; one ACL entry (the VM, RWX); one range. */
	memset(req, 0, 64);
	put_u32(req + 4, label);
	put_u32(req + 8, 1);
	put_u16(req + 12, vm->vmid);
	req[14] = 0x7;
	put_u16(req + 16, 1);
	put_u64(req + 20, vm->pa);
	put_u64(req + 28, VM_SIZE);
	err = rm_call(RM_MEM_LEND, req, 40, rep, &rep_len);
	vm->handle = get_u32(rep);
	if (!ok(err == 0 && rep_len == 4, "MEM_LEND of the VM's memory gives a handle")) {
		diag("error", err);
		return 0;
	}
	/* VM_CONFIG_IMAGE: image at offset 0, DTB at DTB_OFFSET of that parcel. */
	memset(req, 0, 40);
	put_u16(req, vm->vmid);
	put_u32(req + 4, vm->handle);
	put_u64(req + 8, 0);
	put_u64(req + 16, DTB_OFFSET);
	put_u64(req + 24, DTB_OFFSET);
	put_u64(req + 32, 0x1000);
	expect_eq("VM_CONFIG_IMAGE", rm_call(RM_VM_CONFIG_IMAGE, req, 40, rep, &rep_len), 0);
	expect_eq("VM_INIT", vmid_call(RM_VM_INIT, vm->vmid), 0);
	return 1;
}

static void reclaim(struct vm *vm)
{
	memset(req, 0, 8);
	put_u32(req, vm->handle);
	expect_eq("MEM_RECLAIM after the VM exited", rm_call(RM_MEM_RECLAIM, req, 8, rep, &rep_len), 0);
	u64 before = faults;
	u32 word = *(volatile u32 *)vm->pa;
	ok(faults == before && word == vm->first_word,
	   "reclaimed memory is the primary's again (no fault, the image is still there)");
}

void payload_main(u64 dtb)
{
	(void)dtb;
	tap_begin("vm");
	rm_init();
	struct vm a = { "A", GSIM_VM_A_PA, 0, 0, 0 }, b = { "B", GSIM_VM_B_PA, 0, 0, 0 };

	u32 err = rm_call(RM_VM_GET_VMID, req, params()->abi == 6 ? 4 : 0, rep, &rep_len);
	ok(err == 0 && (rep[0] | rep[1] << 8) == 3, "VM_GET_VMID: the primary is VMID 3");
	if (!create_vm(&a, 1) || !create_vm(&b, 2)) {
		tap_end();
		return;
	}
	ok(a.vmid != b.vmid, "two VMs get different VMIDs");
	expect_eq("VM_START of VM A (1 vCPU)", vmid_call(RM_VM_START, a.vmid), 0);
	expect_eq("VM_START of VM B (2 vCPUs)", vmid_call(RM_VM_START, b.vmid), 0);
	expect_eq("VM_START again is refused (wrong state)", vmid_call(RM_VM_START, a.vmid) != 0, 1);

	u64 before = faults;
	u32 v = *(volatile u32 *)(a.pa + 0x1000);
	(void)v;
	ok(faults == before + 1 && fault_far == a.pa + 0x1000,
	   "reading memory lent to a VM faults in the primary (stage 2)");
	*(volatile u32 *)(b.pa + 0x2000) = 0xdead;
	ok(faults == before + 2, "writing memory lent to a VM faults too");

	memset(req, 0, 8);
	put_u32(req, a.handle);
	ok(rm_call(RM_MEM_RECLAIM, req, 8, rep, &rep_len) != 0,
	   "MEM_RECLAIM while the VM runs is refused");

	ok(rm_wait_notification(RM_NOTIF_VM_EXITED, a.vmid, 400), "VM_EXITED notification for VM A");
	ok(rm_wait_notification(RM_NOTIF_VM_EXITED, b.vmid, 400), "VM_EXITED notification for VM B");
	reclaim(&a);
	reclaim(&b);

	/* VM C never traps (vm_spin.c): VM_STOP must still take it off its CPU. */
	struct vm c = { "C", GSIM_VM_C_PA, 0, 0, 0 };
	volatile u64 *counter = (volatile u64 *)(GSIM_VM_C_PA + 0x180000);
	*counter = 0;
	if (create_vm(&c, 3)) {
		expect_eq("VM_START of VM C (never traps)", vmid_call(RM_VM_START, c.vmid), 0);
		sleep_ms(500);                          /* let it count for a while */
		expect_eq("VM_STOP of the running VM C", vmid_call(RM_VM_STOP, c.vmid), 0);
		ok(rm_wait_notification(RM_NOTIF_VM_EXITED, c.vmid, 400),
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
