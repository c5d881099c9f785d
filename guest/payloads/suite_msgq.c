/*
 * Conformance suite "msgq": Gunyah message queues through the real hypercalls, on a loopback
 * queue whose both ends the host gave this VM (capability IDs from gsim_params.h), with the
 * interrupts arriving through QEMU's GICv3.  Error codes are the hypervisor's (docs/abi.md).
 */
#include "lib.h"

#define MSGQ_SEND 0xc600801bull
#define MSGQ_RECV 0xc600801cull
#define PUSH 1ull

#define OK 0
#define ARG_INVAL 1
#define ARG_SIZE 2
#define ADDR_INVAL 22
#define CSPACE_CAP_NULL 50
#define CSPACE_INSUF_RIGHTS 53
#define MSGQUEUE_EMPTY 60
#define MSGQUEUE_FULL 61

#define MAX_MSG 240
#define LOOP_TX_INTID (32 + GSIM_LOOP_TX_SPI)
#define LOOP_RX_INTID (32 + GSIM_LOOP_RX_SPI)

static unsigned char out[256], in[256];

static struct smccc_res send(u64 capid, u64 size, const void *buf, u64 flags)
{
	return hvc(MSGQ_SEND, capid, size, (u64)buf, flags, 0);
}

static struct smccc_res recv(u64 capid, void *buf, u64 size)
{
	return hvc(MSGQ_RECV, capid, (u64)buf, size, 0, 0);
}

static void fill(unsigned char *b, u64 n, unsigned char seed)
{
	for (u64 i = 0; i < n; i++)
		b[i] = (unsigned char)(seed + i * 7);
}

static int same(const unsigned char *a, const unsigned char *b, u64 n)
{
	for (u64 i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static void basic(void)
{
	fill(out, 17, 1);
	struct smccc_res r = send(GSIM_LOOP_TX_CAPID, 17, out, PUSH);
	expect_eq("send 17 bytes: OK", r.x0, OK);
	expect_eq("send: ready (queue not full)", r.x1, 1);
	expect_eq("RX interrupt arrives through the GIC after a send to an empty queue",
		  gic_poll(1000000), LOOP_RX_INTID);
	memset(in, 0, sizeof(in));
	r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG);
	expect_eq("receive: OK", r.x0, OK);
	expect_eq("receive: size is the sent size", r.x1, 17);
	ok(same(in, out, 17), "receive: payload bytes intact");
	expect_eq("receive: not ready (queue now empty)", r.x2, 0);
	r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG);
	ok(r.x0 == MSGQUEUE_EMPTY && r.x1 == 0 && r.x2 == 0,
	   "receive on an empty queue: MSGQUEUE_EMPTY, size 0, not ready");
	fill(out, MAX_MSG, 9);
	r = send(GSIM_LOOP_TX_CAPID, MAX_MSG, out, 0);
	expect_eq("send of exactly the maximum message size: OK", r.x0, OK);
	r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG);
	ok(r.x0 == OK && r.x1 == MAX_MSG && same(in, out, MAX_MSG), "maximum-size message intact");
	gic_drain();
}

static void capability_errors(void)
{
	struct smccc_res r = send(0xffffffffffffffffull, 4, out, 0);
	expect_eq("send with CAPID_INVAL (U64_MAX): ARGUMENT_INVALID", r.x0, ARG_INVAL);
	r = send(GSIM_EMPTY_SLOT_CAPID, 4, out, 0);
	expect_eq("send with an empty cspace slot: CSPACE_CAP_NULL", r.x0, CSPACE_CAP_NULL);
	r = send(GSIM_LOOP_RX_CAPID, 4, out, 0);
	expect_eq("send on a receive-only capability: CSPACE_INSUFFICIENT_RIGHTS", r.x0,
		  CSPACE_INSUF_RIGHTS);
	r = recv(GSIM_LOOP_TX_CAPID, in, MAX_MSG);
	expect_eq("receive on a send-only capability: CSPACE_INSUFFICIENT_RIGHTS", r.x0,
		  CSPACE_INSUF_RIGHTS);
	r = recv(0x12345678abcdull, in, MAX_MSG);
	expect_eq("receive with an undecodable capability ID: ARGUMENT_INVALID", r.x0, ARG_INVAL);
	r = send(GSIM_LOOP_TX_CAPID, MAX_MSG + 1, out, 0);
	ok(r.x0 == ARG_SIZE && r.x1 == 0, "oversize send (241 bytes): ARGUMENT_SIZE, not ready");
	r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG);
	expect_eq("a failed send queued nothing", r.x0, MSGQUEUE_EMPTY);
}

static void full_queue(void)
{
	struct smccc_res r;
	u64 accepted = 0, last_ready = 1;
	for (u64 i = 0; i < GSIM_LOOP_DEPTH; i++) {
		out[0] = (unsigned char)(0xa0 + i);
		r = send(GSIM_LOOP_TX_CAPID, 1, out, 0);
		accepted += r.x0 == OK;
		last_ready = r.x1;
	}
	expect_eq("queue accepts exactly its depth", accepted, GSIM_LOOP_DEPTH);
	expect_eq("the send that fills the queue reports not ready", last_ready, 0);
	r = send(GSIM_LOOP_TX_CAPID, 1, out, 0);
	ok(r.x0 == MSGQUEUE_FULL && r.x1 == 0, "send to a full queue: MSGQUEUE_FULL, not ready");
	gic_drain();
	r = recv(GSIM_LOOP_RX_CAPID, in, 0);
	expect_eq("receive into a too-small buffer: ARGUMENT_SIZE", r.x0, ARG_SIZE);
	r = recv(GSIM_LOOP_RX_CAPID, (void *)0x1000, MAX_MSG);
	expect_eq("receive into a buffer outside RAM: ADDR_INVALID", r.x0, ADDR_INVAL);
	r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG);
	ok(r.x0 == OK && in[0] == 0xa0 && r.x2 == 1,
	   "failed receives lost nothing: first message comes out first, more ready");
	expect_eq("TX interrupt when a full queue gets room", gic_poll(1000000), LOOP_TX_INTID);
	u64 order_ok = 1, n = 1;
	while ((r = recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG)).x0 == OK) {
		order_ok &= in[0] == 0xa0 + n;
		n++;
	}
	ok(order_ok && n == GSIM_LOOP_DEPTH, "messages come out in FIFO order");
	gic_drain();
}

static void push_semantics(void)
{
	send(GSIM_LOOP_TX_CAPID, 1, out, 0);
	u32 first = gic_poll(1000000);
	send(GSIM_LOOP_TX_CAPID, 1, out, 0);
	u32 second = gic_poll(100000);
	send(GSIM_LOOP_TX_CAPID, 1, out, PUSH);
	u32 third = gic_poll(1000000);
	expect_eq("RX interrupt on the empty -> non-empty send", first, LOOP_RX_INTID);
	expect_eq("no RX interrupt for a second message without push", second, 1023);
	expect_eq("push raises the RX interrupt although the queue was not empty", third,
		  LOOP_RX_INTID);
	while (recv(GSIM_LOOP_RX_CAPID, in, MAX_MSG).x0 == OK)
		;
	gic_drain();
}

void secondary_main(u64 context) { (void)context; }

void payload_main(u64 dtb)
{
	(void)dtb;
	tap_begin("msgq");
	gic_init();
	gic_enable_spi(GSIM_LOOP_TX_SPI);
	gic_enable_spi(GSIM_LOOP_RX_SPI);
	basic();
	capability_errors();
	full_queue();
	push_semantics();
	tap_end();
}
