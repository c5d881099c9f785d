"""The RM behind the primary VM's message queues, driven through the real msgq hypercalls.

`Linux` plays the driver: it fragments requests as v6 or v17 does, sends them with msgq_send
from a guest buffer (MMU off: VA = PA in FakeBackend RAM), and drains replies and notifications
with msgq_recv, as the RX interrupt handler loops while "ready".
"""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from gunyah_el2 import capabilities as caps
from gunyah_el2.backend import EC_HVC64, FakeBackend, RaiseSpi, VcpuExit
from gunyah_el2.errors import GunyahError
from gunyah_el2.hypervisor import Hypervisor
from gunyah_el2.rm import codec, handlers
from gunyah_el2.rm import messages as m
from gunyah_el2.rm.codec import Complete, Header, MsgType
from gunyah_el2.rm.errors import RmError
from gunyah_el2.rm.server import ResourceManager
from gunyah_el2.rm.state import VmStatus
from gunyah_el2.trace import Tracer

SEND, RECV = 0xC600801B, 0xC600801C
TXBUF, RXBUF = 0x4100_0000, 0x4100_1000
RAM, PAGE = 0x8000_0000, 0x1000          # addresses of parcels (not touched by the RM)


class Linux:
    def __init__(self, abi="v17", tracer=None):
        self.hv = Hypervisor(FakeBackend(), abi=abi, tracer=tracer)
        self.abi = abi
        self.seq = 0
        self.rx = codec.Reassembler("linux")
        self.notes: list[Complete] = []
        self.spis: list[int] = []

    @property
    def rm(self) -> ResourceManager:
        return self.hv.primary.rm

    def hvc(self, *x):
        regs = tuple(list(x) + [0] * (8 - len(x)))
        reply = self.hv.handle_exit(VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0x4040_0000,
                                             spsr=0x3C5, x=regs))
        self.spis += [a.spi for a in reply.actions if isinstance(a, RaiseSpi)]
        return reply

    def send(self, message: bytes, push: bool = True):
        self.hv.backend.write_phys(TXBUF, message)
        reply = self.hvc(SEND, caps.RM_TX.capid, len(message), TXBUF, int(push))
        assert reply.x[0] == 0, reply.x[0]
        return reply

    def recv(self) -> bytes | None:
        reply = self.hvc(RECV, caps.RM_RX.capid, RXBUF, 240)
        if reply.x[0] == GunyahError.MSGQUEUE_EMPTY:
            return None
        assert reply.x[0] == 0
        return self.hv.backend.read_phys(RXBUF, reply.x[1])

    def drain(self) -> list[Complete]:
        out = []
        while (message := self.recv()) is not None:
            got = self.rx.feed(message)
            if isinstance(got, Complete):
                (self.notes if got.type == MsgType.NOTIFICATION else out).append(got)
        return out

    def request(self, msg_id: int, payload: bytes, seq: int | None = None) -> None:
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
        msgs = codec.encode_request(msg_id, seq, payload, self.abi)
        for i, message in enumerate(msgs):
            self.send(message, push=i == len(msgs) - 1)

    def call(self, msg_id: int, payload: bytes = b"") -> tuple[int, bytes]:
        self.request(msg_id, payload)
        replies = self.drain()
        assert [(r.type, r.seq, r.msg_id) for r in replies] == \
            [(MsgType.REPLY, self.seq, msg_id)], replies
        err, = struct.unpack_from("<I", replies[0].payload)
        return err, replies[0].payload[4:]

    def ok(self, msg_id: int, payload: bytes = b"") -> bytes:
        err, data = self.call(msg_id, payload)
        assert err == RmError.OK, RmError(err).name
        return data

    def statuses(self, vmid):
        out = []
        for n in self.notes:
            if n.msg_id == m.NOTIFY_VM_STATUS:
                note = m.VmStatusNotification.decode(n.payload)
                if note.vmid == vmid:
                    out.append(VmStatus(note.vm_status).name)
        return out


# --- the flows of docs/rm.md section 5 ---------------------------------------------------------
def test_v6_flow():
    linux = Linux("v6")
    # GH_CREATE_VM
    data = linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode("v6"))
    vmid, pad = struct.unpack("<HH", data)                      # v6 reads u16 vmid + u16 pad
    assert (vmid, pad) == (0x80, 0)
    # SET_USER_MEM_REGION (shared, 600 scattered pages): GET_VMID, SHARE + APPEND
    assert linux.ok(m.VM_GET_VMID, m.GetVmidRequest().encode("v6")) == b"\x03\x00"
    pages = tuple((RAM + 2 * i * PAGE, PAGE) for i in range(600))
    share = m.MemParcelRequest(flags=m.PARCEL_FLAG_APPEND, label=1,
                               acl=((vmid, 7), (3, 7)), sgl=pages[:512]).encode("v6")
    assert len(share) == 20 + 8 + 512 * 16                     # 36 fragments on the wire
    handle, = struct.unpack("<I", linux.ok(m.MEM_SHARE, share))
    linux.ok(m.MEM_APPEND, m.MemAppendRequest(handle, m.APPEND_FLAG_END, pages[512:]).encode())
    parcel = linux.rm.state.parcels.parcels[handle]
    assert parcel.complete and len(parcel.ranges) == 600
    # GH_VM_START
    linux.ok(m.VM_CONFIG_IMAGE, m.ConfigImageRequest(vmid, 0, handle, 0, 0, 0x1000,
                                                     0x2000).encode())
    linux.ok(m.VM_INIT, m.VmInitRequest(vmid).encode())
    linux.ok(m.VM_START, m.VmidRequest(vmid).encode())
    assert parcel.accepted == {vmid}
    # close: STOP(0, 0), then RECLAIM per region
    linux.ok(m.VM_STOP, m.VmStopRequest(vmid, 0, 0).encode())
    linux.ok(m.MEM_RECLAIM, m.MemReclaimRequest(handle).encode())
    assert linux.rm.state.parcels.parcels == {}
    assert linux.statuses(vmid) == ["INIT", "READY", "RUNNING", "EXITED"]
    assert linux.rm.backlog == type(linux.rm.backlog)()


def test_v17_flow():
    linux = Linux("v17")
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    dtb = RAM + 0x10_0000
    handle, = struct.unpack("<I", linux.ok(m.MEM_LEND, m.MemParcelRequest(
        label=0, acl=((vmid, 7),), sgl=((dtb, 0x4000),)).encode()))
    linux.ok(m.VM_CONFIG_IMAGE, m.ConfigImageRequest(vmid, 0, handle, 0, 0, 0x0,
                                                     0x3000).encode())
    linux.ok(m.VM_SET_DEMAND_PAGING, m.SetDemandPagingRequest(vmid, ((RAM, 0x10_0000),)).encode())
    linux.ok(m.VM_SET_ADDRESS_LAYOUT, m.SetAddressLayoutRequest(vmid, m.RANGE_IMAGE, dtb,
                                                                0x4000).encode())
    linux.ok(m.VM_INIT, m.VmInitRequest(vmid).encode())
    linux.ok(m.VM_SET_BOOT_CONTEXT, m.SetBootContextRequest(vmid, m.REG_SET_PC, 0,
                                                            RAM).encode())
    linux.ok(m.VM_SET_BOOT_CONTEXT, m.SetBootContextRequest(vmid, m.REG_SET_X, 0, dtb).encode())
    resources = m.HypResourcesReply.decode(linux.ok(m.VM_GET_HYP_RESOURCES,
                                                    m.VmidRequest(vmid).encode()))
    assert resources.entries == ()
    linux.ok(m.VM_START, m.VmidRequest(vmid).encode())
    # teardown: STOP(FORCE, 3) then wait for VM_EXITED; RECLAIM; RESET then wait for RESET
    linux.ok(m.VM_STOP, m.VmStopRequest(vmid, m.STOP_FLAG_FORCE, 3).encode())
    exited = [m.VmExitedNotification.decode(n.payload) for n in linux.notes
              if n.msg_id == m.NOTIFY_VM_EXITED]
    assert exited == [m.VmExitedNotification(vmid, m.EXIT_VM_STOP_FORCED, bytes(4))]
    linux.ok(m.MEM_RECLAIM, m.MemReclaimRequest(handle).encode())
    linux.ok(m.VM_RESET, m.VmidRequest(vmid).encode())
    assert linux.statuses(vmid)[-1] == "RESET"                 # sent after the reply
    linux.ok(m.VM_DEALLOC_VMID, m.VmidRequest(vmid).encode())
    assert linux.rm.state.vms == {}
    assert linux.statuses(vmid) == ["INIT", "READY", "RUNNING", "EXITED", "RESETTING", "RESET"]
    vm = linux.rm.state  # the VM is gone; its configuration went with it
    assert vm.parcels.parcels == {}
    assert [n.seq for n in linux.notes] == list(range(len(linux.notes)))   # RM's own counter


def test_get_vmid_layouts_per_generation():
    assert Linux("v17").ok(m.VM_GET_VMID) == b"\x03\x00\x00\x00"
    assert Linux("v17").call(m.VM_GET_VMID, bytes(4)) == (RmError.MSG_INVALID, b"")
    assert Linux("v6").ok(m.VM_GET_VMID, bytes(4)) == b"\x03\x00"


def test_v6_boot_context_layout():
    linux = Linux("v6")
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    h, = struct.unpack("<I", linux.ok(m.MEM_LEND, m.MemParcelRequest(
        acl=((vmid, 7),), sgl=((RAM, PAGE),)).encode("v6")))
    linux.ok(m.VM_CONFIG_IMAGE, m.ConfigImageRequest(vmid, 0, h, 0, 0, 0, 0).encode())
    linux.ok(m.VM_INIT, m.VmInitRequest(vmid).encode())
    raw = struct.pack("<HBBII", vmid, m.REG_SET_X, 1, 0x89ABCDEF, 0x01234567)
    linux.ok(m.VM_SET_BOOT_CONTEXT, raw)
    assert linux.rm.state.vms[vmid].boot_context == {(0, 1): 0x0123456789ABCDEF}
    assert linux.call(m.VM_SET_BOOT_CONTEXT, raw + bytes(4))[0] == RmError.MSG_INVALID


# --- transport: backlog, interrupts ------------------------------------------------------------
def big_resources(n=60):
    return [m.HypResource(m.RES_VCPU, resource_label=i, cap_id=0x100 + i, virq=64 + i)
            for i in range(n)]


def test_reply_longer_than_the_queue_is_delivered_as_the_guest_drains():
    linux = Linux("v17")
    linux.rm.state.hooks.hyp_resources = lambda vm: big_resources()
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    linux.spis.clear()
    linux.request(m.VM_GET_HYP_RESOURCES, m.VmidRequest(vmid).encode())
    rx = linux.hv.primary.rm_rx
    assert len(rx.messages) == rx.depth and len(linux.rm.backlog) == 12 - rx.depth
    assert linux.spis == [caps.RM_RX.spi]                     # once: empty -> non-empty
    (reply,) = linux.drain()
    assert reply.payload[:4] == bytes(4)
    assert m.HypResourcesReply.decode(reply.payload[4:]).entries == tuple(big_resources())
    assert not linux.rm.backlog and not rx.messages


def test_messages_leave_in_order_and_never_interleave():
    linux = Linux("v17")
    linux.rm.state.hooks.hyp_resources = lambda vm: big_resources()
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    linux.request(m.VM_GET_HYP_RESOURCES, m.VmidRequest(vmid).encode())
    first = linux.seq
    linux.request(m.VM_GET_VMID, b"")                         # its reply waits in the backlog
    replies = linux.drain()
    assert [(r.seq, r.msg_id) for r in replies] == [(first, m.VM_GET_HYP_RESOURCES),
                                                    (first + 1, m.VM_GET_VMID)]


def test_seq_reuse_while_the_reply_is_queued_is_dropped():
    linux = Linux("v17")
    linux.rm.state.hooks.hyp_resources = lambda vm: big_resources()
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    linux.request(m.VM_GET_HYP_RESOURCES, m.VmidRequest(vmid).encode())
    before = linux.rm.state.snapshot()
    linux.request(m.VM_ALLOC_VMID, m.VmidRequest(0).encode(), seq=linux.seq)
    assert linux.rm.dropped == 1 and linux.rm.state.snapshot() == before
    assert [r.msg_id for r in linux.drain()] == [m.VM_GET_HYP_RESOURCES]
    linux.request(m.VM_GET_VMID, b"", seq=linux.seq)          # delivered: the seq is free again
    assert [r.msg_id for r in linux.drain()] == [m.VM_GET_VMID]


def test_rpc_is_traced():
    tracer = Tracer()
    linux = Linux("v17", tracer=tracer)
    linux.call(m.VM_ALLOC_VMID, m.VmidRequest(0).encode())
    rpcs = [r for r in tracer.records() if r.get("event") == "rpc"]
    assert [(r["dir"], r["type"], r["name"]) for r in rpcs] == [
        ("recv", "request", "VM_ALLOC_VMID"), ("send", "reply", "VM_ALLOC_VMID")]
    assert rpcs[1]["error"] == 0 and rpcs[1]["size"] == 4


# --- malformed input ---------------------------------------------------------------------------
def header(kind=MsgType.REQUEST, fragments=0, seq=1, msg_id=m.VM_GET_VMID, b0=0x21):
    return bytes([b0]) + Header(kind, fragments, seq, msg_id).pack()[1:]


@pytest.mark.parametrize("message", [
    b"\x21", header()[:7],                                    # truncated header
    header(b0=0x22), header(b0=0x31),                         # version, header words
    header()[:1] + bytes([1 | 63 << 2]) + header()[2:],       # 63 fragments
    header(MsgType.CONTINUATION, 1),                          # continuation without request
    header(MsgType.REPLY), header(MsgType.NOTIFICATION),      # not requests
])
def test_malformed_messages_are_dropped_without_reply_or_change(message):
    linux = Linux("v17")
    before = linux.rm.state.snapshot()
    linux.send(message)
    assert linux.drain() == [] and linux.notes == []
    assert linux.rm.dropped == 1 and linux.rm.state.snapshot() == before


def test_oversize_message_is_rejected_by_the_queue_or_dropped_by_the_rm():
    linux = Linux("v17")
    linux.hv.backend.write_phys(TXBUF, bytes(241))
    assert linux.hvc(SEND, caps.RM_TX.capid, 241, TXBUF, 1).x[0] == GunyahError.ARG_SIZE
    linux.rm.receive(header() + bytes(240))                  # straight in: dropped
    assert linux.rm.dropped == 1 and not linux.rm.backlog


def test_unknown_message_id_gets_unimplemented():
    linux = Linux("v17")
    assert linux.call(0x56000099, bytes(4)) == (RmError.UNIMPLEMENTED, b"")
    assert linux.call(0, b"") == (RmError.UNIMPLEMENTED, b"")


def test_interrupted_fragmented_request_is_aborted_by_the_next():
    linux = Linux("v6")
    msgs = codec.encode_request(m.MEM_SHARE, 9, bytes(600), "v6")
    linux.send(msgs[0], push=False)
    linux.ok(m.VM_GET_VMID, bytes(4))
    for message in msgs[1:]:
        linux.send(message)
    assert linux.drain() == [] and linux.rm.state.parcels.parcels == {}


# --- every message: an error reply for a bad payload, and an error from the state -------------
VMID = 0x80
BAD_STATE = {   # msg_id: (valid payload that fails on a fresh RM with one VM in LOAD, error)
    m.VM_ALLOC_VMID: (m.VmidRequest(64).encode(), RmError.NORESOURCE),
    m.VM_DEALLOC_VMID: (m.VmidRequest(0x99).encode(), RmError.VMID_INVALID),
    m.VM_START: (m.VmidRequest(VMID).encode(), RmError.VM_STATE),
    m.VM_STOP: (m.VmStopRequest(VMID, 1, 3).encode(), RmError.VM_STATE),
    m.VM_RESET: (m.VmidRequest(VMID).encode(), RmError.VM_STATE),
    m.VM_CONFIG_IMAGE: (m.ConfigImageRequest(VMID, 0, 5, 0, 0, 0, 0).encode(),
                        RmError.MEM_INVALID),
    m.VM_INIT: (m.VmInitRequest(VMID).encode(), RmError.VM_STATE),
    m.VM_GET_HYP_RESOURCES: (m.VmidRequest(0x99).encode(), RmError.VMID_INVALID),
    m.VM_GET_VMID: None,
    m.VM_SET_BOOT_CONTEXT: (m.SetBootContextRequest(VMID, 0, 0, 0).encode(), RmError.VM_STATE),
    m.VM_SET_FIRMWARE_MEM: (m.SetFirmwareMemRequest(VMID, 0, 0, 0, 0).encode(),
                            RmError.VM_STATE),
    m.VM_SET_DEMAND_PAGING: (m.SetDemandPagingRequest(0x99).encode(), RmError.VMID_INVALID),
    m.VM_SET_ADDRESS_LAYOUT: (m.SetAddressLayoutRequest(VMID, 7, 0, 0).encode(),
                              RmError.ARGUMENT_INVALID),
    m.MEM_LEND: (m.MemParcelRequest(acl=((VMID, 7),), sgl=((RAM, 1),)).encode(),
                 RmError.ARGUMENT_INVALID),
    m.MEM_SHARE: (m.MemParcelRequest(acl=((VMID, 7),), sgl=((RAM, PAGE),)).encode(),
                  RmError.ARGUMENT_INVALID),
    m.MEM_DONATE: (m.MemParcelRequest(acl=((VMID, 6),), sgl=((RAM, PAGE),)).encode(),
                   RmError.DENIED),
    m.MEM_APPEND: (m.MemAppendRequest(7, 1, ((RAM, PAGE),)).encode(), RmError.HANDLE_INVALID),
    m.MEM_RECLAIM: (m.MemReclaimRequest(7).encode(), RmError.HANDLE_INVALID),
}
TOO_SHORT = {m.MEM_RECLAIM: bytes(7), m.MEM_APPEND: bytes(11), m.MEM_LEND: bytes(19),
             m.MEM_SHARE: bytes(19), m.MEM_DONATE: bytes(19)}


def test_the_table_covers_every_message():
    assert set(BAD_STATE) == set(handlers.BY_ID)


@pytest.mark.parametrize("msg_id", sorted(handlers.BY_ID), ids=m.name_of)
def test_each_message_answers_errors_without_changing_state(msg_id):
    linux = Linux("v17")
    linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode())
    before = linux.rm.state.snapshot()
    if msg_id != m.VM_GET_VMID:
        bad = TOO_SHORT.get(msg_id, bytes(3))
        assert linux.call(msg_id, bad) == (RmError.MSG_INVALID, b"")
        payload, error = BAD_STATE[msg_id]
        assert linux.call(msg_id, payload) == (error, b"")
    assert linux.rm.state.snapshot() == before


def test_list_over_512_entries_is_noresource():
    linux = Linux("v17")
    vmid, = struct.unpack("<I", linux.ok(m.VM_ALLOC_VMID, m.VmidRequest(0).encode()))
    req = m.MemParcelRequest(acl=((vmid, 7),),
                             sgl=tuple((RAM + i * 2 * PAGE, PAGE) for i in range(513)))
    assert linux.call(m.MEM_LEND, req.encode()) == (RmError.NORESOURCE, b"")


def test_notifications_go_only_to_the_primary_vm():
    out = []
    rm = ResourceManager("v17", out.append)
    rm.notify(0x80, m.VmStatusNotification(0x80, 3))
    assert out == []
    rm.notify(3, m.VmStatusNotification(0x80, 3))
    assert len(out) == 1 and Header.unpack(out[0]).type == MsgType.NOTIFICATION


# --- property: random bytes never raise; without an OK reply nothing changes -------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=240),
    st.builds(lambda kind, frags, seq, mid, body: Header(kind, frags, seq, mid).pack() + body,
              st.sampled_from(list(MsgType)), st.integers(0, 3), st.integers(0, 3),
              st.sampled_from(sorted(handlers.BY_ID) + [0, 0x56000099]),
              st.binary(max_size=60))), max_size=12))
def test_random_messages_never_raise_and_change_state_only_on_success(messages):
    out = []
    rm = ResourceManager("v17", lambda msg: out.append(msg) or True)
    rm.state.alloc_vmid(3, 0)
    for message in messages:
        before = rm.state.snapshot()
        out.clear()
        rm.receive(message)
        replies = [Header.unpack(o) for o in out if Header.unpack(o).type == MsgType.REPLY]
        ok = any(o[8:12] == bytes(4) for o in out if Header.unpack(o).type == MsgType.REPLY)
        assert len(replies) <= 1
        if not ok:
            assert rm.state.snapshot() == before
        rm.state.parcels.check_invariants()


def test_docs_carry_the_generated_message_table():
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "rm.md").read_text()
    assert handlers.markdown_table() in doc
