// SPDX-License-Identifier: GPL-2.0
/*
 * gsim_rmtest: a scripted check of gunyah-sim's Resource Manager from a real Linux guest.
 *
 * Written for gunyah-sim (not derived from the Gunyah driver series).  At load time it finds
 * the RM's message queues through the "gunyah-resource-manager" DT node (both the v6 and the
 * v17 binding), requests their two interrupts and runs RM RPCs over real hypercalls
 * (msgq_send / msgq_recv), checking each reply.  Results are TAP lines in the kernel log,
 * each prefixed "gsim_rmtest: " (the host strips the prefix and the printk timestamp).
 *
 * Layouts: docs/rm.md (header, fragments, message IDs, error codes) and docs/abi.md
 * (hypercall registers, UIDs).
 *
 * bench=N: instead of the cases, time N VM_GET_VMID round trips and print median and p99.
 */
#define pr_fmt(fmt) "gsim_rmtest: " fmt

#include <linux/arm-smccc.h>
#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/interrupt.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/of.h>
#include <linux/of_address.h>
#include <linux/of_irq.h>
#include <linux/irq.h>
#include <linux/io.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <asm/unaligned.h>

static int bench;
module_param(bench, int, 0444);
MODULE_PARM_DESC(bench, "time this many VM_GET_VMID round trips instead of running the cases");
static int poll;
module_param(poll, int, 0444);
MODULE_PARM_DESC(poll, "debugging: 1 = also poll the RX queue while waiting, 2 = poll only (no RX interrupt)");

/* --- hypercalls (docs/abi.md sections 2, 3, 5) ---------------------------------------------- */
#define FN_VENDOR_HYP_UID	0x8600FF01
#define FN_HYP_IDENTIFY		0xC6008000
#define FN_MSGQ_SEND		0xC600801B
#define FN_MSGQ_RECV		0xC600801C

#define GH_OK			0
#define GH_MSGQUEUE_EMPTY	60
#define GH_MSGQUEUE_FULL	61
#define MSGQ_PUSH		1

/* --- RM RPC (docs/rm.md section 1) ----------------------------------------------------------- */
#define RM_MSG_SIZE		240
#define RM_HDR_SIZE		8
#define RM_CONTENT		(RM_MSG_SIZE - RM_HDR_SIZE)
#define RM_MAX_FRAGS		62
#define RM_MAX_PAYLOAD		(RM_CONTENT * (RM_MAX_FRAGS + 1))
#define RM_HDR_BYTE0		0x21	/* API version 1, 2 header words */

enum { T_CONT = 0, T_REQUEST = 1, T_REPLY = 2, T_NOTIFY = 3 };

#define VM_ALLOC_VMID		0x56000001
#define VM_DEALLOC_VMID		0x56000002
#define VM_GET_VMID		0x56000024
#define MEM_LEND		0x51000012
#define MEM_SHARE		0x51000013
#define MEM_RECLAIM		0x51000015
#define UNKNOWN_MSG_ID		0x5600FFF0

#define RM_OK			0x0
#define RM_NORESOURCE		0x2
#define RM_MSG_INVALID		0x4
#define RM_HANDLE_INVALID	0x7
#define RM_MEM_INVALID		0xA
#define RM_VMID_INVALID		0xD
#define RM_UNIMPLEMENTED	0xFFFFFFFF

#define RIGHT_W			2
#define RIGHT_R			4
#define PRIMARY_VMID		3	/* the real RM's VMID_HLOS */
#define REQUESTED_VMID		0x2A
#define SHARE_SMALL		20	/* 348-byte request: 2 messages */
#define SHARE_LARGE		120	/* 1948-byte request: 9 messages, more than the queue depth */

#define REPLY_TIMEOUT_MS	5000
#define SILENCE_MS		1000	/* how long a dropped request must stay unanswered */

/* --- state ----------------------------------------------------------------------------------- */
static u64 tx_capid, rx_capid;
static int tx_irq, rx_irq;
static bool tx_irq_requested, rx_irq_requested;
static bool abi_v6;

static atomic_t rx_irqs = ATOMIC_INIT(0);
static atomic_t tx_irqs = ATOMIC_INIT(0);
static atomic_t rx_errors = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(rx_wq);
static DECLARE_COMPLETION(tx_room);

/* Messages taken off the RX queue by the interrupt thread, consumed by the caller. */
#define RING_SLOTS 128
struct rx_slot {
	u16 len;
	u8 data[RM_MSG_SIZE];
};
static struct rx_slot *ring;
static unsigned int ring_head, ring_tail;	/* head: next to read; tail: next to write */
static DEFINE_SPINLOCK(ring_lock);
static unsigned int ring_overflows;

static u8 *tx_buf;		/* one outgoing message (kmalloc: a linear-map VA for the hyp) */
static u8 *rx_buf;		/* one incoming message, used by the interrupt thread only */
static u8 *req_buf;		/* a request payload being built */
static u8 *reply_buf;		/* a reassembled reply content (error word first) */
static u16 next_seq;

/* Replies and messages that did not belong to the call being waited for. */
static unsigned int stray_msgs, notifications, bad_msgs;

/* --- TAP ------------------------------------------------------------------------------------- */
static int tap_count, tap_failed;

/* Diagnostics are collected while a case runs and printed after its TAP line. */
static char diag_buf[1024];
static size_t diag_len;

static __printf(1, 2) void diag(const char *fmt, ...)
{
	va_list ap;
	int n;

	if (diag_len >= sizeof(diag_buf) - 2)
		return;
	va_start(ap, fmt);
	n = vscnprintf(diag_buf + diag_len, sizeof(diag_buf) - 1 - diag_len, fmt, ap);
	va_end(ap);
	diag_len += n;
	diag_buf[diag_len++] = '\n';
	diag_buf[diag_len] = 0;
}

static void diag_flush(void)
{
	char *line, *rest = diag_buf;

	while ((line = strsep(&rest, "\n")) && diag_len)
		if (*line)
			pr_info("# %s\n", line);
	diag_len = 0;
	diag_buf[0] = 0;
}

static __printf(2, 3) void tap(bool ok, const char *fmt, ...)
{
	char text[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	tap_count++;
	if (!ok)
		tap_failed++;
	pr_info("%s %d - %s\n", ok ? "ok" : "not ok", tap_count, text);
	diag_flush();
}

/* --- interrupts ------------------------------------------------------------------------------ */
static irqreturn_t tx_handler(int irq, void *data)
{
	atomic_inc(&tx_irqs);
	complete(&tx_room);
	return IRQ_HANDLED;
}

static void ring_put(const u8 *msg, size_t len)
{
	unsigned long flags;

	spin_lock_irqsave(&ring_lock, flags);
	if (ring_tail - ring_head >= RING_SLOTS) {
		ring_overflows++;
	} else {
		struct rx_slot *slot = &ring[ring_tail % RING_SLOTS];

		slot->len = len;
		memcpy(slot->data, msg, len);
		ring_tail++;
	}
	spin_unlock_irqrestore(&ring_lock, flags);
}

static bool ring_get(struct rx_slot *out)
{
	unsigned long flags;
	bool got = false;

	spin_lock_irqsave(&ring_lock, flags);
	if (ring_head != ring_tail) {
		*out = ring[ring_head % RING_SLOTS];
		ring_head++;
		got = true;
	}
	spin_unlock_irqrestore(&ring_lock, flags);
	return got;
}

static bool ring_nonempty(void)
{
	return READ_ONCE(ring_head) != READ_ONCE(ring_tail);
}

/* Take every message off the RX queue (until the hypervisor says it is empty). */
static void rx_drain(void)
{
	struct arm_smccc_res res;

	for (;;) {
		arm_smccc_1_1_hvc(FN_MSGQ_RECV, rx_capid, (unsigned long)rx_buf, RM_MSG_SIZE, 0,
				  &res);
		if (res.a0 == GH_MSGQUEUE_EMPTY)
			break;
		if (res.a0 != GH_OK || res.a1 > RM_MSG_SIZE) {
			atomic_inc(&rx_errors);
			break;
		}
		ring_put(rx_buf, res.a1);
		if (!res.a2)
			break;
	}
}

/* The RX interrupt is edge-triggered: drain the queue. */
static DEFINE_MUTEX(rx_lock);

static irqreturn_t rx_thread(int irq, void *data)
{
	atomic_inc(&rx_irqs);
	mutex_lock(&rx_lock);
	rx_drain();
	mutex_unlock(&rx_lock);
	wake_up(&rx_wq);
	return IRQ_HANDLED;
}

/* --- sending --------------------------------------------------------------------------------- */
/* One message-queue message; waits for the TX interrupt when the queue is (or becomes) full. */
static int msgq_send(const void *msg, size_t len, bool push)
{
	struct arm_smccc_res res;
	int tries;

	memcpy(tx_buf, msg, len);
	for (tries = 0; tries < 50; tries++) {
		reinit_completion(&tx_room);
		arm_smccc_1_1_hvc(FN_MSGQ_SEND, tx_capid, len, (unsigned long)tx_buf,
				  push ? MSGQ_PUSH : 0, 0, &res);
		if (res.a0 == GH_OK) {
			if (!res.a1)	/* full now: the next send waits for room */
				wait_for_completion_timeout(&tx_room, msecs_to_jiffies(1000));
			return 0;
		}
		if (res.a0 != GH_MSGQUEUE_FULL) {
			diag("msgq_send of %zu bytes: hypervisor error %lu", len, res.a0);
			return -EIO;
		}
		wait_for_completion_timeout(&tx_room, msecs_to_jiffies(100));
	}
	return -EBUSY;
}

static void put_header(u8 *msg, int type, unsigned int frags, u16 seq, u32 msg_id)
{
	msg[0] = RM_HDR_BYTE0;
	msg[1] = (type & 3) | (frags << 2);
	put_unaligned_le16(seq, msg + 2);
	put_unaligned_le32(msg_id, msg + 4);
}

/* Fragment a request as the selected Linux generation does (docs/rm.md 1.1) and send it. */
static int rm_send_request(u32 msg_id, u16 seq, const u8 *payload, size_t len)
{
	u8 msg[RM_MSG_SIZE];
	unsigned int frags, i;
	int ret;

	if (abi_v6)
		frags = len / RM_CONTENT;
	else
		frags = len ? (len - 1) / RM_CONTENT : 0;
	if (frags > RM_MAX_FRAGS)
		return -E2BIG;
	for (i = 0; i <= frags; i++) {
		size_t off = i * RM_CONTENT;
		size_t chunk = min_t(size_t, len - off, RM_CONTENT);

		put_header(msg, i ? T_CONT : T_REQUEST, frags, seq, msg_id);
		if (chunk)
			memcpy(msg + RM_HDR_SIZE, payload + off, chunk);
		ret = msgq_send(msg, RM_HDR_SIZE + chunk, i == frags);
		if (ret)
			return ret;
	}
	return 0;
}

/* --- receiving ------------------------------------------------------------------------------- */
struct reply {
	u32 err;		/* RM error word */
	size_t len;		/* data bytes after the error word, in reply_buf + 4 */
	unsigned int frags;	/* continuation messages the reply came in */
};

/*
 * Wait for the reply to (msg_id, seq).  Other messages are counted and skipped.
 * Returns 0, -ETIMEDOUT (nothing within timeout_ms) or -EIO (a broken reply).
 */
static int rm_wait_reply(u32 msg_id, u16 seq, struct reply *out, unsigned int timeout_ms)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	struct rx_slot *slot;
	bool assembling = false;
	unsigned int frags = 0, got_frags = 0;
	size_t size = 0;
	int ret = -ETIMEDOUT;

	slot = kmalloc(sizeof(*slot), GFP_KERNEL);
	if (!slot)
		return -ENOMEM;
	for (;;) {
		u8 type, nfrags;
		u16 mseq;
		u32 mid;

		if (!ring_get(slot)) {
			long left = (long)(deadline - jiffies);

			if (poll) {
				if (left <= 0)
					break;
				mutex_lock(&rx_lock);
				rx_drain();
				mutex_unlock(&rx_lock);
				if (!ring_nonempty())
					usleep_range(100, 200);
				continue;
			}

			if (left <= 0 ||
			    !wait_event_timeout(rx_wq, ring_nonempty(), left))
				break;
			continue;
		}
		if (slot->len < RM_HDR_SIZE || slot->data[0] != RM_HDR_BYTE0) {
			bad_msgs++;
			continue;
		}
		type = slot->data[1] & 3;
		nfrags = slot->data[1] >> 2;
		mseq = get_unaligned_le16(slot->data + 2);
		mid = get_unaligned_le32(slot->data + 4);
		if (type == T_NOTIFY) {
			notifications++;
			continue;
		}
		if (type == T_REPLY && mseq == seq) {
			if (mid != msg_id) {
				diag("reply seq %u has msg_id %#x, expected %#x", seq, mid, msg_id);
				ret = -EIO;
				break;
			}
			assembling = true;
			frags = nfrags;
			got_frags = 0;
			size = 0;
		} else if (type == T_CONT && assembling) {
			if (mseq != seq || mid != msg_id || nfrags != frags) {
				diag("continuation %#x seq %u does not match", mid, mseq);
				ret = -EIO;
				break;
			}
			got_frags++;
		} else {
			stray_msgs++;
			diag("unexpected message: type %u seq %u msg_id %#x", type, mseq, mid);
			continue;
		}
		if (size + slot->len - RM_HDR_SIZE > RM_MAX_PAYLOAD) {
			ret = -EIO;
			break;
		}
		memcpy(reply_buf + size, slot->data + RM_HDR_SIZE, slot->len - RM_HDR_SIZE);
		size += slot->len - RM_HDR_SIZE;
		if (got_frags < frags)
			continue;
		if (size < 4) {
			diag("reply of %zu bytes has no error word", size);
			ret = -EIO;
			break;
		}
		out->err = get_unaligned_le32(reply_buf);
		out->len = size - 4;
		out->frags = frags;
		ret = 0;
		break;
	}
	kfree(slot);
	return ret;
}

static u16 alloc_seq(void)
{
	return next_seq++;
}

/* One RPC: send the request, wait for its reply.  0 means a reply arrived (see r->err). */
static int rm_call(u32 msg_id, const u8 *payload, size_t len, struct reply *r)
{
	u16 seq = alloc_seq();
	int ret;

	ret = rm_send_request(msg_id, seq, payload, len);
	if (ret)
		return ret;
	return rm_wait_reply(msg_id, seq, r, REPLY_TIMEOUT_MS);
}

static const u8 *reply_data(void)
{
	return reply_buf + 4;
}

/* A compact description of a call's outcome, for TAP diagnostics. */
static void diag_outcome(int ret, const struct reply *r)
{
	if (ret)
		diag("no reply: %d", ret);
	else
		diag("RM error %#x, %zu data bytes", r->err, r->len);
}

/* --- request builders ------------------------------------------------------------------------ */
static size_t vmid_request(u8 *p, u16 vmid)
{
	put_unaligned_le16(vmid, p);
	put_unaligned_le16(0, p + 2);
	return 4;
}

/* MEM_LEND / MEM_SHARE body (docs/rm.md 3.1): acl = {vmid, rights} pairs, pages of 4 KiB. */
static size_t parcel_request(u8 *p, const u16 *vmids, const u8 *rights, int n_acl,
			     struct page **pages, int n_mem, u32 label)
{
	size_t off = 0;
	int i;

	p[0] = 0;		/* normal memory */
	p[1] = 0;
	p[2] = 0;		/* flags: no APPEND, no sanitize */
	p[3] = 0;
	put_unaligned_le32(label, p + 4);
	off = 8;
	put_unaligned_le16(n_acl, p + off);
	put_unaligned_le16(0, p + off + 2);
	off += 4;
	for (i = 0; i < n_acl; i++) {
		put_unaligned_le16(vmids[i], p + off);
		p[off + 2] = rights[i];
		p[off + 3] = 0;
		off += 4;
	}
	put_unaligned_le16(n_mem, p + off);
	put_unaligned_le16(0, p + off + 2);
	off += 4;
	for (i = 0; i < n_mem; i++) {
		put_unaligned_le64(page_to_phys(pages[i]), p + off);
		put_unaligned_le64(PAGE_SIZE, p + off + 8);
		off += 16;
	}
	put_unaligned_le32(0, p + off);	/* no attribute entries */
	return off + 4;
}

static size_t reclaim_request(u8 *p, u32 handle)
{
	put_unaligned_le32(handle, p);
	memset(p + 4, 0, 4);
	return 8;
}

/* --- helpers for cases ----------------------------------------------------------------------- */
static bool call_ok(u32 msg_id, size_t len, struct reply *r, size_t want_len)
{
	int ret = rm_call(msg_id, req_buf, len, r);

	if (ret || r->err != RM_OK || r->len != want_len) {
		diag_outcome(ret, r);
		if (!ret && r->err == RM_OK)
			diag("expected %zu data bytes", want_len);
		return false;
	}
	return true;
}

static bool call_err(u32 msg_id, size_t len, u32 want_err)
{
	struct reply r;
	int ret = rm_call(msg_id, req_buf, len, &r);

	if (ret || r.err != want_err || r.len) {
		diag_outcome(ret, &r);
		diag("expected RM error %#x and no data", want_err);
		return false;
	}
	return true;
}

static size_t get_vmid_request(u8 *p)
{
	if (abi_v6) {		/* v6 sends a zero u32, v17 an empty payload (docs/rm.md 3) */
		put_unaligned_le32(0, p);
		return 4;
	}
	return 0;
}

/* VM_GET_VMID; returns the VMID or -1. */
static int get_vmid(void)
{
	struct reply r;
	size_t want = abi_v6 ? 2 : 4;

	if (!call_ok(VM_GET_VMID, get_vmid_request(req_buf), &r, want))
		return -1;
	return abi_v6 ? get_unaligned_le16(reply_data()) : (int)get_unaligned_le32(reply_data());
}

/* Nothing may come back for (msg_id, seq) within SILENCE_MS, and the RM must still answer. */
static bool dropped_and_alive(u32 msg_id, u16 seq)
{
	struct reply r;
	int ret = rm_wait_reply(msg_id, seq, &r, SILENCE_MS);
	int vmid;

	if (ret != -ETIMEDOUT) {
		diag("expected no reply; got %d", ret);
		if (!ret)
			diag_outcome(ret, &r);
		return false;
	}
	vmid = get_vmid();
	if (vmid != PRIMARY_VMID) {
		diag("VM_GET_VMID afterwards: %d", vmid);
		return false;
	}
	return true;
}

static struct page **alloc_pages_array(int n)
{
	struct page **pages = kcalloc(n, sizeof(*pages), GFP_KERNEL);
	int i;

	if (!pages)
		return NULL;
	for (i = 0; i < n; i++) {
		pages[i] = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!pages[i]) {
			while (i--)
				__free_page(pages[i]);
			kfree(pages);
			return NULL;
		}
	}
	return pages;
}

/* Pages the RM may still consider lent are never given back to the allocator. */
static void free_pages_array(struct page **pages, int n, bool reclaimed)
{
	int i;

	if (!pages)
		return;
	if (reclaimed)
		for (i = 0; i < n; i++)
			__free_page(pages[i]);
	kfree(pages);
}

/* --- the DT node and interrupts -------------------------------------------------------------- */
/*
 * An interrupt the GIC does not implement (INTID beyond GICD_TYPER's line count) is never set
 * up by Linux's GIC driver; if the hypervisor still makes it pending, the unconfigured line
 * (group 0, priority 0) can starve every other interrupt.  Check before enabling it.
 */
static int check_gic_line(int irq, const char *what)
{
	struct device_node *gic = of_find_compatible_node(NULL, NULL, "arm,gic-v3");
	struct irq_data *d = irq_get_irq_data(irq);
	void __iomem *gicd;
	unsigned long lines;
	int ret = 0;

	if (!gic || !d)
		goto out;		/* not a GICv3: nothing to check */
	gicd = of_iomap(gic, 0);
	if (!gicd)
		goto out;
	lines = 32 * ((readl(gicd + 0x4) & 0x1f) + 1);	/* GICD_TYPER.ITLinesNumber */
	iounmap(gicd);
	if (irqd_to_hwirq(d) >= lines) {
		diag("%s interrupt: INTID %lu is beyond the GIC's %lu lines (GICD_TYPER)", what,
		     irqd_to_hwirq(d), lines);
		ret = -ERANGE;
	}
out:
	of_node_put(gic);
	return ret;
}

static int find_rm(void)
{
	struct device_node *np, *hyp;
	int ret;

	hyp = of_find_compatible_node(NULL, NULL, "gunyah-hypervisor-1.0");
	abi_v6 = hyp != NULL;
	of_node_put(hyp);

	np = of_find_compatible_node(NULL, NULL, "gunyah-resource-manager");
	if (!np) {
		diag("no gunyah-resource-manager node in the DT");
		return -ENODEV;
	}
	ret = of_property_read_u64_index(np, "reg", 0, &tx_capid);
	if (!ret)
		ret = of_property_read_u64_index(np, "reg", 1, &rx_capid);
	if (ret) {
		diag("cannot read the capability IDs from reg: %d", ret);
		goto out;
	}
	/* Maps the interrupts (v17) or finds the mapping the platform device made (v6). */
	tx_irq = irq_of_parse_and_map(np, 0);
	rx_irq = irq_of_parse_and_map(np, 1);
	if (!tx_irq || !rx_irq) {
		diag("cannot map the interrupts (tx %d rx %d)", tx_irq, rx_irq);
		ret = -ENXIO;
		goto out;
	}
	ret = check_gic_line(tx_irq, "TX");
	ret = check_gic_line(rx_irq, "RX") ?: ret;
	if (ret)
		goto out;
	ret = request_irq(tx_irq, tx_handler, 0, "gsim_rmtest_tx", NULL);
	if (ret) {
		diag("request_irq(tx %d): %d", tx_irq, ret);
		goto out;
	}
	tx_irq_requested = true;
	if (poll == 2)
		goto out;
	ret = request_threaded_irq(rx_irq, NULL, rx_thread, IRQF_ONESHOT, "gsim_rmtest_rx",
				   NULL);
	if (ret) {
		diag("request_irq(rx %d): %d", rx_irq, ret);
		goto out;
	}
	rx_irq_requested = true;
out:
	of_node_put(np);
	return ret;
}

/* --- cases ----------------------------------------------------------------------------------- */
static const u32 uid_v6[4] = { 0x673D5F14, 0x9265CE36, 0xA4535FDB, 0xC1D58FCD };
/* UUID c1d58fcd-a453-5fdb-9265-ce36673d5f14 as four little-endian u32 words */
static const u32 uid_v17[4] = { 0xCD8FD5C1, 0xDB5F53A4, 0x36CE6592, 0x145F3D67 };

static bool uid_matches(const struct arm_smccc_res *res)
{
	const u32 *want = abi_v6 ? uid_v6 : uid_v17;

	if (res->a0 == want[0] && res->a1 == want[1] && res->a2 == want[2] &&
	    res->a3 == want[3])
		return true;
	diag("got %#lx %#lx %#lx %#lx", res->a0, res->a1, res->a2, res->a3);
	return false;
}

static void case_identity(void)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(FN_VENDOR_HYP_UID, &res);
	tap(uid_matches(&res), "vendor hyp UID over HVC is Gunyah's (abi %s)",
	    abi_v6 ? "v6" : "v17");

	arm_smccc_1_1_invoke(FN_VENDOR_HYP_UID, &res);
	tap(uid_matches(&res), "vendor hyp UID over the SMCCC conduit (%s)",
	    arm_smccc_1_1_get_conduit() == SMCCC_CONDUIT_SMC ? "smc" : "hvc");

	arm_smccc_1_1_hvc(FN_HYP_IDENTIFY, &res);
	if ((res.a0 & 0x3FFF) != 1 || !(res.a0 & BIT(15)) || !(res.a1 & BIT(2)))
		diag("api_info %#lx flags0 %#lx", res.a0, res.a1);
	tap((res.a0 & 0x3FFF) == 1 && (res.a0 & BIT(15)) && (res.a1 & BIT(2)),
	    "hyp_identify: API version 1, 64-bit, message queues");
}

static void run_cases(void)
{
	struct reply r;
	struct page **lent = NULL, **shared_small = NULL, **shared_large = NULL;
	bool lent_back = false, small_back = false, large_back = false;
	u32 lend_handle = 0, small_handle = 0, large_handle = 0;
	bool have_small = false, have_large = false;
	int dyn_vmid = -1, vmid, ok;
	u16 acl_vmids[2];
	u8 acl_rights[2] = { RIGHT_R | RIGHT_W, RIGHT_R | RIGHT_W };
	size_t len;
	u16 seq;

	case_identity();

	/* VMIDs */
	vmid = get_vmid();
	tap(vmid == PRIMARY_VMID, "VM_GET_VMID answers the primary VM's VMID 3 (got %d)", vmid);

	len = vmid_request(req_buf, 0);
	ok = call_ok(VM_ALLOC_VMID, len, &r, 4);
	if (ok)
		dyn_vmid = get_unaligned_le32(reply_data());
	tap(ok && dyn_vmid >= 0x80 && dyn_vmid <= 0xBF,
	    "VM_ALLOC_VMID(0) allocates a dynamic VMID (got %#x)", dyn_vmid);

	len = vmid_request(req_buf, REQUESTED_VMID);
	tap(call_ok(VM_ALLOC_VMID, len, &r, 0), "VM_ALLOC_VMID(%#x) allocates the requested VMID",
	    REQUESTED_VMID);
	len = vmid_request(req_buf, REQUESTED_VMID);
	tap(call_err(VM_ALLOC_VMID, len, RM_NORESOURCE),
	    "VM_ALLOC_VMID of a taken VMID -> NORESOURCE");

	/* lend one page to the new VM, reclaim it, reclaim it again */
	lent = alloc_pages_array(1);
	acl_vmids[0] = dyn_vmid > 0 ? dyn_vmid : 0x80;
	if (lent) {
		len = parcel_request(req_buf, acl_vmids, acl_rights, 1, lent, 1, 0x1234);
		ok = call_ok(MEM_LEND, len, &r, 4);
		if (ok)
			lend_handle = get_unaligned_le32(reply_data());
	} else {
		ok = false;
		diag("out of memory");
	}
	tap(ok, "MEM_LEND of one page (PA %#llx) to VM %#x -> handle %#x",
	    lent ? (unsigned long long)page_to_phys(lent[0]) : 0ULL, acl_vmids[0], lend_handle);
	if (lent) {
		len = parcel_request(req_buf, acl_vmids, acl_rights, 1, lent, 1, 0x1235);
		ok = call_err(MEM_LEND, len, RM_MEM_INVALID);
	}
	tap(lent && ok, "MEM_LEND of a page already lent -> MEM_INVALID");
	len = reclaim_request(req_buf, lend_handle);
	lent_back = call_ok(MEM_RECLAIM, len, &r, 0);
	tap(lent_back, "MEM_RECLAIM of the lent page");
	len = reclaim_request(req_buf, lend_handle);
	tap(call_err(MEM_RECLAIM, len, RM_HANDLE_INVALID),
	    "MEM_RECLAIM of the same handle again -> HANDLE_INVALID");

	/* fragmented requests: MEM_SHARE with many memory entries */
	acl_vmids[0] = PRIMARY_VMID;
	acl_vmids[1] = dyn_vmid > 0 ? dyn_vmid : 0x80;
	shared_small = alloc_pages_array(SHARE_SMALL);
	ok = false;
	if (shared_small) {
		len = parcel_request(req_buf, acl_vmids, acl_rights, 2, shared_small, SHARE_SMALL,
				     0x2000);
		ok = call_ok(MEM_SHARE, len, &r, 4);
		if (ok) {
			small_handle = get_unaligned_le32(reply_data());
			have_small = true;
		}
		tap(ok, "MEM_SHARE of %d pages: %zu-byte request in %zu messages, one reply",
		    SHARE_SMALL, len, (len - 1) / RM_CONTENT + 1);
	} else {
		tap(false, "MEM_SHARE of %d pages (out of memory)", SHARE_SMALL);
	}
	shared_large = alloc_pages_array(SHARE_LARGE);
	ok = false;
	if (shared_large) {
		len = parcel_request(req_buf, acl_vmids, acl_rights, 2, shared_large, SHARE_LARGE,
				     0x2001);
		ok = call_ok(MEM_SHARE, len, &r, 4);
		if (ok) {
			large_handle = get_unaligned_le32(reply_data());
			have_large = true;
		}
		tap(ok && large_handle != small_handle,
		    "MEM_SHARE of %d pages: %zu-byte request in %zu messages (> queue depth)",
		    SHARE_LARGE, len, (len - 1) / RM_CONTENT + 1);
	} else {
		tap(false, "MEM_SHARE of %d pages (out of memory)", SHARE_LARGE);
	}
	if (have_small) {
		len = reclaim_request(req_buf, small_handle);
		small_back = call_ok(MEM_RECLAIM, len, &r, 0);
	}
	if (have_large) {
		len = reclaim_request(req_buf, large_handle);
		large_back = call_ok(MEM_RECLAIM, len, &r, 0);
	}
	tap(small_back && large_back, "MEM_RECLAIM of both shared parcels");

	/* freeing VMIDs */
	len = vmid_request(req_buf, dyn_vmid > 0 ? dyn_vmid : 0x80);
	tap(dyn_vmid > 0 && call_ok(VM_DEALLOC_VMID, len, &r, 0),
	    "VM_DEALLOC_VMID of the dynamic VMID");
	len = vmid_request(req_buf, REQUESTED_VMID);
	tap(call_ok(VM_DEALLOC_VMID, len, &r, 0), "VM_DEALLOC_VMID of the requested VMID");
	len = vmid_request(req_buf, dyn_vmid > 0 ? dyn_vmid : 0x80);
	tap(call_err(VM_DEALLOC_VMID, len, RM_VMID_INVALID),
	    "VM_DEALLOC_VMID of an unknown VMID -> VMID_INVALID");

	/* bad requests */
	tap(call_err(UNKNOWN_MSG_ID, 0, RM_UNIMPLEMENTED),
	    "unknown message ID %#x -> UNIMPLEMENTED", UNKNOWN_MSG_ID);
	put_unaligned_le16(0, req_buf);
	tap(call_err(VM_ALLOC_VMID, 2, RM_MSG_INVALID),
	    "truncated VM_ALLOC_VMID payload (2 bytes) -> MSG_INVALID");

	{
		u8 msg[RM_MSG_SIZE];

		/* a message shorter than the header */
		seq = alloc_seq();
		put_header(msg, T_REQUEST, 0, seq, VM_GET_VMID);
		ok = msgq_send(msg, 5, true) == 0 && dropped_and_alive(VM_GET_VMID, seq);
		tap(ok, "5-byte message (truncated header) dropped; the RM still answers");

		/* wrong API version in the header */
		seq = alloc_seq();
		put_header(msg, T_REQUEST, 0, seq, VM_GET_VMID);
		msg[0] = 0x22;
		ok = msgq_send(msg, RM_HDR_SIZE + get_vmid_request(msg + RM_HDR_SIZE), true) == 0 &&
		     dropped_and_alive(VM_GET_VMID, seq);
		tap(ok, "header with API version 2 dropped; the RM still answers");

		/* a continuation with no message in progress */
		seq = alloc_seq();
		put_header(msg, T_CONT, 1, seq, VM_GET_VMID);
		ok = msgq_send(msg, RM_HDR_SIZE + 4, true) == 0 &&
		     dropped_and_alive(VM_GET_VMID, seq);
		tap(ok, "stray continuation dropped; the RM still answers");

		/* the first of two fragments, then a new request: the first is abandoned */
		seq = alloc_seq();
		put_header(msg, T_REQUEST, 1, seq, MEM_SHARE);
		memset(msg + RM_HDR_SIZE, 0, RM_CONTENT);
		ok = msgq_send(msg, RM_MSG_SIZE, true) == 0;
		vmid = get_vmid();
		ok = ok && vmid == PRIMARY_VMID && rm_wait_reply(MEM_SHARE, seq, &r, SILENCE_MS) ==
			-ETIMEDOUT;
		tap(ok, "incomplete fragmented request abandoned by the next request (which is answered)");
	}

	tap(stray_msgs == 0 && bad_msgs == 0 && atomic_read(&rx_errors) == 0 && !ring_overflows,
	    "every reply matched its request (seq, msg_id); no stray or broken messages");
	if (stray_msgs || bad_msgs || ring_overflows || atomic_read(&rx_errors))
		diag("stray %u broken %u ring overflows %u recv errors %d", stray_msgs, bad_msgs,
		     ring_overflows, atomic_read(&rx_errors));
	diag("interrupts: rx %d tx %d; notifications %u", atomic_read(&rx_irqs),
	     atomic_read(&tx_irqs), notifications);
	tap(atomic_read(&rx_irqs) > 0, "RX interrupts delivered (%d)", atomic_read(&rx_irqs));

	free_pages_array(lent, 1, lent_back);
	free_pages_array(shared_small, SHARE_SMALL, small_back || !have_small);
	free_pages_array(shared_large, SHARE_LARGE, large_back || !have_large);
}

/* --- bench ----------------------------------------------------------------------------------- */
static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

static void run_bench(int n)
{
	u64 *ns = kvmalloc_array(n, sizeof(*ns), GFP_KERNEL);
	u64 sum = 0;
	int i, failures = 0;

	if (!ns) {
		pr_info("bench: out of memory\n");
		return;
	}
	for (i = 0; i < n; i++) {
		ktime_t t0 = ktime_get();
		int vmid = get_vmid();

		ns[i] = ktime_to_ns(ktime_sub(ktime_get(), t0));
		if (vmid != PRIMARY_VMID)
			failures++;
		sum += ns[i];
	}
	sort(ns, n, sizeof(*ns), cmp_u64, NULL);
	pr_info("bench rpc=VM_GET_VMID n=%d failures=%d median_ns=%llu p99_ns=%llu min_ns=%llu max_ns=%llu mean_ns=%llu rx_irqs=%d\n",
		n, failures, ns[n / 2], ns[min(n - 1, (n * 99) / 100)], ns[0], ns[n - 1],
		div_u64(sum, n), atomic_read(&rx_irqs));
	kvfree(ns);
}

/* --- module ---------------------------------------------------------------------------------- */
static void release_all(void)
{
	if (rx_irq_requested)
		free_irq(rx_irq, NULL);
	if (tx_irq_requested)
		free_irq(tx_irq, NULL);
	rx_irq_requested = tx_irq_requested = false;
	kfree(ring);
	kfree(tx_buf);
	kfree(rx_buf);
	kvfree(req_buf);
	kvfree(reply_buf);
	ring = NULL;
	tx_buf = rx_buf = req_buf = reply_buf = NULL;
}

/*
 * Always 0 once the results are out: the module then stays loaded, inert.  (A failing init
 * would run twice: busybox insmod retries a failed finit_module with init_module.)
 */
static int __init gsim_rmtest_init(void)
{
	int ret;

	ring = kcalloc(RING_SLOTS, sizeof(*ring), GFP_KERNEL);
	tx_buf = kmalloc(RM_MSG_SIZE, GFP_KERNEL);
	rx_buf = kmalloc(RM_MSG_SIZE, GFP_KERNEL);
	req_buf = kvzalloc(RM_MAX_PAYLOAD, GFP_KERNEL);
	reply_buf = kvzalloc(RM_MAX_PAYLOAD, GFP_KERNEL);
	if (!ring || !tx_buf || !rx_buf || !req_buf || !reply_buf) {
		pr_info("Bail out! out of memory\n");
		release_all();
		return 0;
	}
	ret = find_rm();
	if (bench > 0) {
		if (!ret)
			run_bench(bench);
		else
			pr_info("bench: no RM (%d)\n", ret);
		diag_flush();
		release_all();
		return 0;
	}
	tap(ret == 0, "found the RM node (abi %s): tx capid %#llx irq %d, rx capid %#llx irq %d",
	    abi_v6 ? "v6" : "v17", tx_capid, tx_irq, rx_capid, rx_irq);
	if (ret) {
		pr_info("Bail out! no usable RM node\n");
		release_all();
		return 0;
	}
	run_cases();
	diag_flush();
	pr_info("1..%d\n", tap_count);
	pr_info("# %d of %d cases failed\n", tap_failed, tap_count);
	release_all();
	return 0;
}

static void __exit gsim_rmtest_exit(void)
{
	release_all();
}

module_init(gsim_rmtest_init);
module_exit(gsim_rmtest_exit);
MODULE_DESCRIPTION("gunyah-sim: Resource Manager RPC checks over real hypercalls");
MODULE_LICENSE("GPL");
