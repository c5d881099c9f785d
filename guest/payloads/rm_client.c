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

static u32 rd32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }
static u16 rd16(const unsigned char *p) { return (u16)(p[0] | p[1] << 8); }

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
		notes[nnotes].id = rd32(msg + 4);
		notes[nnotes].vmid = rd16(msg + HDR);
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
		if (type == 2 && rd16(msg + 2) == seq && rd32(msg + 4) == msg_id) {
			err = rd32(msg + HDR);
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
