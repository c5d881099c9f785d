/*
 * Conformance suite "rm": the Resource Manager's RPC from a bare-metal primary VM, through the
 * real message-queue hypercalls and GIC interrupts.  Expected error codes are the real RM's
 * (docs/rm.md): 0x2 NORESOURCE, 0x4 MSG_INVALID, 0x6 ARGUMENT_INVALID, 0x7 HANDLE_INVALID,
 * 0xA MEM_INVALID, 0xB MEM_INUSE, 0xD VMID_INVALID, 0x14 VM_STATE, 0xFFFFFFFF UNIMPLEMENTED.
 */
#include "rm_client.h"

#define RM_MEM_SHARE 0x51000013u
#define RM_MEM_APPEND 0x51000018u
#define NORESOURCE 0x2u
#define MSG_INVALID 0x4u
#define ARGUMENT_INVALID 0x6u
#define HANDLE_INVALID 0x7u
#define MEM_INVALID 0xau
#define VMID_INVALID 0xdu
#define VM_STATE 0x14u
#define UNIMPLEMENTED 0xffffffffu

/* Pages the primary lends and shares in these tests (RAM it does not otherwise use). */
#define TEST_PAGES 0x52000000ull
#define PAGE 0x1000ull

void secondary_main(u64 context) { (void)context; }

static unsigned char req[1024], rep[256];
static u32 rep_len;

/* MEM_LEND/MEM_SHARE request: one ACL entry per vmid (RWX), `n` ranges of one page each. */
static u32 mem_request(u32 msg_id, const u16 *vmids, u32 nacl, u64 base, u32 n, u32 flags,
		       u32 *handle)
{
	u32 off = 0;
	memset(req, 0, sizeof(req));
	req[2] = (unsigned char)flags;
	put_u32(req + 4, 0x77);                     /* label */
	put_u32(req + 8, nacl);
	off = 12;
	for (u32 i = 0; i < nacl; i++, off += 4) {
		put_u16(req + off, vmids[i]);
		req[off + 2] = 0x7;
	}
	put_u16(req + off, (u16)n);
	off += 4;
	for (u32 i = 0; i < n; i++, off += 16) {
		put_u64(req + off, base + 2 * i * PAGE);     /* every other page: n distinct ranges */
		put_u64(req + off + 8, PAGE);
	}
	off += 4;                                          /* no attribute entries */
	u32 err = rm_call(msg_id, req, off, rep, &rep_len);
	*handle = rep_len >= 4 ? get_u32(rep) : 0xffffffffu;
	return err;
}

void payload_main(u64 dtb)
{
	(void)dtb;
	int v6 = params()->abi == 6;
	tap_begin("rm");
	rm_init();

	u32 err = rm_call(RM_VM_GET_VMID, req, v6 ? 4 : 0, rep, &rep_len);
	ok(err == 0 && get_u16(rep) == 3, "VM_GET_VMID: the primary is VMID 3");

	memset(req, 0, 4);
	err = rm_call(RM_VM_ALLOC_VMID, req, 4, rep, &rep_len);
	u16 a = get_u16(rep);
	ok(err == 0 && a >= 0x80 && a < 0xc0, "VM_ALLOC_VMID(0): a dynamic VMID");
	err = rm_call(RM_VM_ALLOC_VMID, req, 4, rep, &rep_len);
	u16 b = get_u16(rep);
	ok(err == 0 && b != a, "a second VM_ALLOC_VMID gives another VMID");
	put_u16(req, 5);
	expect_eq("VM_ALLOC_VMID(5): the requested VMID", rm_call(RM_VM_ALLOC_VMID, req, 4, rep,
										     &rep_len), 0);
	expect_eq("VM_ALLOC_VMID(5) again: NORESOURCE", rm_call(RM_VM_ALLOC_VMID, req, 4, rep,
									&rep_len), NORESOURCE);
	expect_eq("VM_DEALLOC_VMID(5)", rm_vmid_call(RM_VM_DEALLOC_VMID, 5), 0);
	expect_eq("VM_DEALLOC_VMID of an unknown VMID: VMID_INVALID",
		  rm_vmid_call(RM_VM_DEALLOC_VMID, 0x7f), VMID_INVALID);
	ok(rm_vmid_call(RM_VM_DEALLOC_VMID, 3) != 0, "VM_DEALLOC_VMID of the primary is refused");
	expect_eq("VM_START of a VM that was never configured: VM_STATE",
		  rm_vmid_call(RM_VM_START, a), VM_STATE);
	expect_eq("VM_INIT of an unknown VMID: VMID_INVALID", rm_vmid_call(RM_VM_INIT, 0x7e),
		  VMID_INVALID);
	expect_eq("VM_STOP of a VM that is not running: VM_STATE", rm_vmid_call(RM_VM_STOP, a), VM_STATE);

	u32 h1, h2, h3;
	u16 acl_a[1] = { a }, acl_share[2] = { a, 3 };
	err = mem_request(RM_MEM_LEND, acl_a, 1, TEST_PAGES, 1, 0, &h1);
	ok(err == 0 && rep_len == 4, "MEM_LEND of one page: a handle");
	expect_eq("MEM_LEND of the same page again: MEM_INVALID",
		  mem_request(RM_MEM_LEND, acl_a, 1, TEST_PAGES, 1, 0, &h2), MEM_INVALID);
	expect_eq("MEM_RECLAIM", rm_mem_reclaim(h1), 0);
	expect_eq("MEM_RECLAIM of the same handle again: HANDLE_INVALID", rm_mem_reclaim(h1),
		  HANDLE_INVALID);
	expect_eq("MEM_RECLAIM of a handle never given: HANDLE_INVALID", rm_mem_reclaim(0x4242),
		  HANDLE_INVALID);
	expect_eq("MEM_LEND to an unknown VMID: ARGUMENT_INVALID (an invalid ACL entry)",
		  mem_request(RM_MEM_LEND, (u16[]){ 0x7d }, 1, TEST_PAGES, 1, 0, &h2),
		  ARGUMENT_INVALID);
	expect_eq("MEM_LEND with an empty ACL: ARGUMENT_INVALID",
		  mem_request(RM_MEM_LEND, acl_a, 0, TEST_PAGES, 1, 0, &h2), ARGUMENT_INVALID);
	expect_eq("MEM_LEND of an unaligned range: ARGUMENT_INVALID",
		  mem_request(RM_MEM_LEND, acl_a, 1, TEST_PAGES + 0x10, 1, 0, &h2), ARGUMENT_INVALID);

	/* 30 ranges: 20 + 8 + 480 bytes = 3 fragments of a request. */
	err = mem_request(RM_MEM_SHARE, acl_share, 2, TEST_PAGES, 30, 0, &h2);
	ok(err == 0 && rep_len == 4, "MEM_SHARE of 30 ranges (a fragmented request): one reply");
	expect_eq("...and it reclaims", rm_mem_reclaim(h2), 0);

	/* MEM_LEND with the APPEND flag, completed by MEM_APPEND with END. */
	err = mem_request(RM_MEM_LEND, acl_a, 1, TEST_PAGES, 2, 1u << 1, &h3);
	ok(err == 0, "MEM_LEND with APPEND flag: a handle for an incomplete parcel");
	memset(req, 0, 64);
	put_u32(req, h3);
	req[4] = 1;                                  /* END */
	put_u16(req + 8, 1);
	put_u64(req + 12, TEST_PAGES + 0x10 * PAGE);
	put_u64(req + 20, PAGE);
	expect_eq("MEM_APPEND with END completes the parcel", rm_call(RM_MEM_APPEND, req, 28, rep,
									  &rep_len), 0);
	expect_eq("MEM_APPEND to a completed parcel is refused", rm_call(RM_MEM_APPEND, req, 28, rep,
									     &rep_len) != 0, 1);
	expect_eq("...and it reclaims", rm_mem_reclaim(h3), 0);

	expect_eq("an unknown message ID: UNIMPLEMENTED", rm_call(0x56000fffu, req, 4, rep,
								    &rep_len), UNIMPLEMENTED);
	expect_eq("a truncated VM_ALLOC_VMID (1 byte): MSG_INVALID",
		  rm_call(RM_VM_ALLOC_VMID, req, 1, rep, &rep_len), MSG_INVALID);
	expect_eq("a truncated MEM_RECLAIM (3 bytes): MSG_INVALID",
		  rm_call(RM_MEM_RECLAIM, req, 3, rep, &rep_len), MSG_INVALID);

	/* A message with a bad header is dropped without a reply; the RM keeps working. */
	static unsigned char bad[12] = { 0x22, 0x01, 0x99, 0x99, 0x24, 0, 0, 0x56 };
	struct smccc_res r = hvc(0xc600801bull, GSIM_RM_TX_CAPID, sizeof(bad), (u64)bad, 1, 0);
	expect_eq("a message with header version 2 is accepted by the queue", r.x0, 0);
	err = rm_call(RM_VM_GET_VMID, req, v6 ? 4 : 0, rep, &rep_len);
	ok(err == 0 && get_u16(rep) == 3, "...dropped by the RM, which still answers the next call");

	expect_eq("VM_DEALLOC_VMID of the dynamic VMIDs", rm_vmid_call(RM_VM_DEALLOC_VMID, a) |
		  rm_vmid_call(RM_VM_DEALLOC_VMID, b), 0);
	ok(rm_rx_interrupts() > 0, "replies arrived with RX interrupts through the GIC");
	tap_end();
}
