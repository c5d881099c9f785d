"""The RM RPC wire format: header, fragmentation (RM, v6 and v17 senders) and reassembly."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from gunyah_el2.rm import codec
from gunyah_el2.rm.codec import (CONTENT_SIZE, MAX_PAYLOAD, Complete, Dropped, Header, MsgType,
                                 Pending, Reassembler)

ID = 0x56000001


def feed_all(r, messages):
    return [r.feed(msg) for msg in messages]


def test_header_layout_matches_the_rm():
    raw = Header(MsgType.REPLY, 5, 0x1234, 0x56000024).pack()
    assert raw == bytes([0x21, 2 | 5 << 2, 0x34, 0x12, 0x24, 0, 0, 0x56])
    assert Header.unpack(raw + b"xyz") == Header(MsgType.REPLY, 5, 0x1234, 0x56000024)


@pytest.mark.parametrize("size,rm,v6", [(0, 0, 0), (1, 0, 0), (231, 0, 0), (232, 0, 1),
                                        (233, 1, 1), (464, 1, 2), (465, 2, 2),
                                        (MAX_PAYLOAD, 62, 63)])
def test_continuation_counts_per_sender(size, rm, v6):
    assert codec.continuations(size, "rm") == codec.continuations(size, "v17") == rm
    assert codec.continuations(size, "v6") == v6


@pytest.mark.parametrize("sender", ["rm", "v17", "v6"])
@pytest.mark.parametrize("size", [0, 1, 231, 232, 233, 463, 464, 465, 4000, 14384, 14615])
def test_fragment_and_reassemble_round_trip(sender, size):
    payload = bytes(i % 251 for i in range(size))
    msgs = codec.fragment(MsgType.REQUEST, ID, 7, payload, sender)
    assert len(msgs) == codec.continuations(size, sender) + 1
    assert all(8 <= len(msg) <= 240 for msg in msgs)
    headers = [Header.unpack(msg) for msg in msgs]
    assert headers[0].type == MsgType.REQUEST
    assert all(h.type == MsgType.CONTINUATION for h in headers[1:])
    assert {(h.seq, h.msg_id, h.fragments) for h in headers} == {(7, ID, len(msgs) - 1)}
    results = feed_all(Reassembler(), msgs)
    assert all(isinstance(r, Pending) for r in results[:-1])
    assert results[-1] == Complete(MsgType.REQUEST, 7, ID, payload)


def test_v6_exact_multiple_sends_a_trailing_empty_continuation():
    msgs = codec.fragment(MsgType.REQUEST, ID, 1, bytes(2 * CONTENT_SIZE), "v6")
    assert [len(m) for m in msgs] == [240, 240, 8]
    assert [len(m) for m in codec.fragment(MsgType.REQUEST, ID, 1, bytes(464), "v17")] == \
        [240, 240]


def test_maximum_fragments():
    msgs = codec.fragment(MsgType.REPLY, ID, 1, bytes(MAX_PAYLOAD))
    assert len(msgs) == 63 and Header.unpack(msgs[0]).fragments == 62
    with pytest.raises(ValueError):
        codec.fragment(MsgType.REPLY, ID, 1, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):          # v6 needs 63 continuations for the RM maximum
        codec.fragment(MsgType.REQUEST, ID, 1, bytes(MAX_PAYLOAD), "v6")


def test_empty_payload_is_one_header_only_message():
    assert codec.fragment(MsgType.NOTIFICATION, ID, 3, b"") == \
        [Header(MsgType.NOTIFICATION, 0, 3, ID).pack()]
    assert Reassembler().feed(Header(MsgType.REQUEST, 0, 3, ID).pack()) == \
        Complete(MsgType.REQUEST, 3, ID, b"")


def test_reply_starts_with_error_word():
    (msg,) = codec.encode_reply(ID, 9, 0x14, b"ab")
    assert msg[8:] == struct.pack("<I", 0x14) + b"ab"
    assert Header.unpack(msg) == Header(MsgType.REPLY, 0, 9, ID)
    # the error word counts toward the first message's 232 bytes
    assert len(codec.encode_reply(ID, 9, 0, bytes(229))) == 2


# --- malformed input ------------------------------------------------------------------------
GOOD = Header(MsgType.REQUEST, 0, 1, ID).pack() + bytes(4)


@pytest.mark.parametrize("message,why", [
    (b"", "shorter"), (GOOD[:7], "shorter"),
    (bytes([0x22]) + GOOD[1:], "version"), (bytes([0x11]) + GOOD[1:], "header words"),
    (GOOD[:1] + bytes([1 | 63 << 2]) + GOOD[2:], "fragments"),
    (GOOD + bytes(240 - len(GOOD) + 1), "exceeds"),
    (Header(MsgType.CONTINUATION, 1, 1, ID).pack(), "without"),
])
def test_malformed_messages_are_dropped(message, why):
    r = Reassembler()
    got = r.feed(message)
    assert isinstance(got, Dropped) and why in got.reason
    assert r.in_progress is None


def test_mismatched_continuation_is_dropped_and_the_message_survives():
    msgs = codec.fragment(MsgType.REQUEST, ID, 4, bytes(range(200)) * 2, "v17")
    r = Reassembler()
    assert isinstance(r.feed(msgs[0]), Pending)
    for bad in (Header(MsgType.CONTINUATION, 1, 5, ID).pack(),          # other seq
                Header(MsgType.CONTINUATION, 1, 4, ID + 1).pack(),      # other msg_id
                Header(MsgType.CONTINUATION, 2, 4, ID).pack()):         # other count
        assert isinstance(r.feed(bad), Dropped)
        assert r.in_progress == Header.unpack(msgs[0])
    assert r.feed(msgs[1]) == Complete(MsgType.REQUEST, 4, ID, bytes(range(200)) * 2)


def test_new_message_aborts_an_incomplete_one_as_the_rm_does():
    r = Reassembler()
    first = codec.fragment(MsgType.REQUEST, ID, 4, bytes(300))
    assert isinstance(r.feed(first[0]), Pending)
    assert r.feed(GOOD) == Complete(MsgType.REQUEST, 1, ID, bytes(4))
    assert isinstance(r.feed(first[1]), Dropped)          # its continuation is now stray


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=260), max_size=20))
def test_random_bytes_never_raise_and_drops_change_nothing(messages):
    r = Reassembler()
    for message in messages:
        before = r.in_progress
        got = r.feed(message)
        assert isinstance(got, (Complete, Pending, Dropped))
        if isinstance(got, Dropped):
            assert r.in_progress == before


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=MAX_PAYLOAD - 1), st.sampled_from(["rm", "v6", "v17"]),
       st.integers(0, 0xFFFF), st.sampled_from(list(MsgType)[1:]))
def test_round_trip_property(payload, sender, seq, kind):
    msgs = codec.fragment(kind, ID, seq, payload, sender)
    assert all(len(m) <= 240 for m in msgs)
    assert feed_all(Reassembler(), msgs)[-1] == Complete(kind, seq, ID, payload)


# --- message payloads (gunyah_el2/rm/messages.py) ---------------------------------------------
from gunyah_el2.rm import messages as m                      # noqa: E402
from gunyah_el2.rm.errors import RmError, RmFailure           # noqa: E402

PAYLOADS = [
    (m.VmidRequest(0x80), 4), (m.VmInitRequest(0x80), 4), (m.VmStopRequest(0x80, 1, 3), 8),
    (m.ConfigImageRequest(0x80, 0, 7, 1, 2, 3, 4), 40),
    (m.SetFirmwareMemRequest(0x80, 0, 1, 2, 3), 24),
    (m.SetDemandPagingRequest(0x80, ((0x1000, 0x2000), (0x5000, 0x1000))), 40),
    (m.SetAddressLayoutRequest(0x80, 1, 0x1000, 0x2000), 24),
    (m.MemParcelRequest(1, 2, 3, ((0x80, 7), (3, 4)), ((0x1000, 0x1000),), ((1, 0x80),)), 48),
    (m.MemReclaimRequest(5, 1), 8), (m.MemAppendRequest(5, 1, ((0x1000, 0x1000),)), 28),
    (m.U32Reply(0x80), 4), (m.EmptyReply(), 0),
    (m.HypResourcesReply((m.HypResource(4, 3, 1, 2, 0x99, 5, 64, 0, 0),)), 48),
    (m.VmStatusNotification(0x80, 11), 8), (m.VmExitedNotification(0x80, 7), 12),
    (m.MemReleasedNotification(5, 0x80, 9), 12), (m.MemAcceptedNotification(5, 0x80), 12),
    (m.MemSharedNotification(5, 0, 1, 0, 3, 0x11, 0, ((0x80, 7),), ((0x1000, 0x1000),)), 52),
]


@pytest.mark.parametrize("abi", ["v6", "v17"])
@pytest.mark.parametrize("payload,size", PAYLOADS, ids=lambda p: type(p).__name__)
def test_payload_round_trip_and_length_checks(payload, size, abi):
    raw = payload.encode(abi)
    assert len(raw) == size
    assert type(payload).decode(raw, abi) == payload
    for bad in (raw[:-1], raw + b"\0") if raw else (b"\0",):
        if isinstance(payload, (m.MemReclaimRequest,)) and len(bad) > len(raw):
            continue                                 # the RM ignores bytes after the first 8
        with pytest.raises(RmFailure) as exc:
            type(payload).decode(bad, abi)
        assert exc.value.error == RmError.MSG_INVALID


def test_abi_dependent_layouts():
    ctx = m.SetBootContextRequest(0x80, 1, 0, 0x1122334455667788)
    assert ctx.encode("v6") == struct.pack("<HBBII", 0x80, 1, 0, 0x55667788, 0x11223344)
    assert ctx.encode("v17") == struct.pack("<HBBIQ", 0x80, 1, 0, 0, 0x1122334455667788)
    assert m.GetVmidRequest().encode("v6") == bytes(4) and m.GetVmidRequest().encode() == b""
    assert m.GetVmidReply(3).encode("v6") == b"\3\0" and m.GetVmidReply(3).encode() == b"\3\0\0\0"
    parcel = m.MemParcelRequest(acl=((0x80, 7),), sgl=((0x1000, 0x1000),))
    assert parcel.encode("v6") == parcel.encode("v17")      # u32 count == u16 count + u16 0
    assert len(parcel.encode()) == 20 + 4 + 16


def test_notification_bytes_the_drivers_expect():
    assert m.VmExitedNotification(0x80, 7).encode() == struct.pack("<HHII", 0x80, 7, 4, 0)
    assert m.VmStatusNotification(0x80, 11).encode() == struct.pack("<HHBBH", 0x80, 0, 11, 0, 0)
    assert len(m.HypResource(4).encode()) == 44


def test_parcel_list_errors():
    head = struct.pack("<BxBxI", 0, 0, 0)
    with pytest.raises(RmFailure) as exc:                    # 513 ACL entries
        m.MemParcelRequest.decode(head + struct.pack("<HH", 513, 0) + bytes(16))
    assert exc.value.error == RmError.NORESOURCE
    with pytest.raises(RmFailure) as exc:                    # list longer than the payload
        m.MemParcelRequest.decode(head + struct.pack("<HH", 5, 0) + bytes(16))
    assert exc.value.error == RmError.MSG_INVALID
    # the attribute section may be absent (RM reads an empty list at the end)
    raw = head + struct.pack("<HH", 1, 0) + struct.pack("<HBx", 0x80, 7) + \
        struct.pack("<HH", 1, 0) + struct.pack("<QQ", 0x1000, 0x1000)
    assert m.MemParcelRequest.decode(raw).attrs == ()
    with pytest.raises(RmFailure):
        m.VmInitRequest.decode(struct.pack("<HH", 0x80, 1))
    with pytest.raises(RmFailure):
        m.SetFirmwareMemRequest.decode(struct.pack("<HHIQQ", 0x80, 1, 0, 0, 0))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["v6", "v17"]))
def test_request_decoders_only_raise_rm_failures(data, abi):
    for cls in (m.VmidRequest, m.VmInitRequest, m.VmStopRequest, m.ConfigImageRequest,
                m.GetVmidRequest, m.SetBootContextRequest, m.SetFirmwareMemRequest,
                m.SetDemandPagingRequest, m.SetAddressLayoutRequest, m.MemParcelRequest,
                m.MemReclaimRequest, m.MemAppendRequest):
        try:
            cls.decode(data, abi)
        except RmFailure:
            pass
