#include "rm_client.h"

#define MSGQ_SEND 0xc600801bull
#define MSGQ_RECV 0xc600801cull
#define MSG_MAX 240
#define HDR 8
#define FRAG_PAYLOAD (MSG_MAX - HDR)

static u16 next_seq;
static u64 rx_irqs;
static unsigned char msg[MSG_MAX];

/* Notifications that arrived while we waited for something else. */
#define NOTES 16
static struct { u32 id; u32 vmid; } notes[NOTES];
static u32 nnotes;

void rm_init(void)
{
	gic_init();
	gic_enable_spi(GSIM_RM_RX_SPI);
	gic_enable_spi(GSIM_RM_TX_SPI);
}

u64 rm_rx_interrupts(void) { return rx_irqs; }

void put_u16(unsigned char *p, u16 v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
void put_u32(unsigned char *p, u32 v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
void put_u64(unsigned char *p, u64 v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
u16 get_u16(const unsigned char *p) { return (u16)(p[0] | p[1] << 8); }
u32 get_u32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static int send_request(u32 msg_id, u16 seq, const unsigned char *req, u32 len)
{
	u32 frags = len ? (len + FRAG_PAYLOAD - 1) / FRAG_PAYLOAD - 1 : 0;
	for (u32 f = 0; f <= frags; f++) {
		u32 n = len - f * FRAG_PAYLOAD;
		if (n > FRAG_PAYLOAD)
			n = FRAG_PAYLOAD;
		msg[0] = 0x21;                                     /* version 1, 2 header words */
		msg[1] = (unsigned char)((f == 0 ? 1 : 0) | (frags << 2));
		msg[2] = (unsigned char)seq;
		msg[3] = (unsigned char)(seq >> 8);
		for (int i = 0; i < 4; i++)
			msg[4 + i] = (unsigned char)(msg_id >> (8 * i));
		memcpy(msg + HDR, req + f * FRAG_PAYLOAD, n);
		struct smccc_res r = hvc(MSGQ_SEND, GSIM_RM_TX_CAPID, HDR + n, (u64)msg,
					 f == frags ? 1 : 0, 0);
		if (r.x0 != 0)
			return -1;
	}
	return 0;
}

/* Receive one message into msg; returns its size, or 0 when none arrived in time. */
static u32 receive_one(u64 spins)
{
	for (u64 i = 0; ; i++) {
		/* Take a pending "message available" interrupt, waiting for one after the first try. */
		if (gic_poll(i ? 200000 : 1) == 32 + GSIM_RM_RX_SPI)
			rx_irqs++;
		struct smccc_res r = hvc(MSGQ_RECV, GSIM_RM_RX_CAPID, (u64)msg, MSG_MAX, 0, 0);
		if (r.x0 == 0)
			return (u32)r.x1;
		if (i >= spins)
			return 0;
	}
}

static void remember_notification(u32 size)
{
	if (size >= HDR + 2 && nnotes < NOTES) {
		notes[nnotes].id = get_u32(msg + 4);
		notes[nnotes].vmid = get_u16(msg + HDR);
		nnotes++;
	}
}

u32 rm_call(u32 msg_id, const void *req, u32 len, void *reply, u32 *reply_len)
{
	u16 seq = next_seq++;
	if (send_request(msg_id, seq, req, len))
		return RM_TRANSPORT_ERROR;
	u32 got = 0, err = RM_TRANSPORT_ERROR, frags_left = 0;
	int have_reply = 0;
	for (int tries = 0; tries < 64; tries++) {
		u32 size = receive_one(50);
		if (!size)
			break;
		u32 type = msg[1] & 3;
		if (type == 3) {                                   /* a notification */
			remember_notification(size);
			continue;
		}
		if (type == 2 && get_u16(msg + 2) == seq && get_u32(msg + 4) == msg_id) {
			err = get_u32(msg + HDR);
			frags_left = msg[1] >> 2;
			u32 n = size - HDR - 4;
			if (reply)
				memcpy(reply, msg + HDR + 4, n);
			got = n;
			have_reply = 1;
		} else if (type == 0 && have_reply && frags_left) {
			u32 n = size - HDR;
			if (reply)
				memcpy((unsigned char *)reply + got, msg + HDR, n);
			got += n;
			frags_left--;
		}
		if (have_reply && !frags_left)
			break;
	}
	if (reply_len)
		*reply_len = got;
	return err;
}

int rm_wait_notification(u32 msg_id, u32 vmid, u64 spins)
{
	for (u64 round = 0; round < spins; round++) {
		for (u32 i = 0; i < nnotes; i++)
			if (notes[i].id == msg_id && notes[i].vmid == vmid)
				return 1;
		u32 size = receive_one(1);
		if (size && (msg[1] & 3) == 3)
			remember_notification(size);
	}
	return 0;
}

static unsigned char vmm_req[64], vmm_rep[64];

u32 rm_vmid_call(u32 msg_id, u16 vmid)
{
	u32 len;
	memset(vmm_req, 0, 8);
	put_u16(vmm_req, vmid);
	return rm_call(msg_id, vmm_req, msg_id == RM_VM_STOP ? 8 : 4, vmm_rep, &len);
}

u32 rm_mem_reclaim(u32 handle)
{
	u32 len;
	memset(vmm_req, 0, 8);
	put_u32(vmm_req, handle);
	return rm_call(RM_MEM_RECLAIM, vmm_req, 8, vmm_rep, &len);
}

int rm_vm_prepare(struct rm_vm *vm, u32 label, u64 image_size, u64 dtb_offset, u64 dtb_size)
{
	u32 len, err;
	memset(vmm_req, 0, 4);
	err = rm_call(RM_VM_ALLOC_VMID, vmm_req, 4, vmm_rep, &len);
	vm->vmid = get_u16(vmm_rep);
	if (!ok(err == 0 && len >= 2 && vm->vmid != 0, "VM_ALLOC_VMID gives a dynamic VMID")) {
		diag("error", err);
		return 0;
	}
	/* MEM_LEND: normal memory, no flags, a label; one ACL entry (the VM, RWX); one range. */
	memset(vmm_req, 0, sizeof(vmm_req));
	put_u32(vmm_req + 4, label);
	put_u32(vmm_req + 8, 1);
	put_u16(vmm_req + 12, vm->vmid);
	vmm_req[14] = 0x7;
	put_u16(vmm_req + 16, 1);
	put_u64(vmm_req + 20, vm->pa);
	put_u64(vmm_req + 28, vm->size);
	err = rm_call(RM_MEM_LEND, vmm_req, 40, vmm_rep, &len);
	vm->handle = get_u32(vmm_rep);
	if (!ok(err == 0 && len == 4, "MEM_LEND of the VM's memory gives a handle")) {
		diag("error", err);
		return 0;
	}
	/* VM_CONFIG_IMAGE: the image at offset 0 of that parcel, the DTB at dtb_offset. */
	memset(vmm_req, 0, 40);
	put_u16(vmm_req, vm->vmid);
	put_u32(vmm_req + 4, vm->handle);
	put_u64(vmm_req + 16, image_size);
	put_u64(vmm_req + 24, dtb_offset);
	put_u64(vmm_req + 32, dtb_size);
	return expect_eq("VM_CONFIG_IMAGE", rm_call(RM_VM_CONFIG_IMAGE, vmm_req, 40, vmm_rep, &len), 0)
		& expect_eq("VM_INIT", rm_vmid_call(RM_VM_INIT, vm->vmid), 0);
}
