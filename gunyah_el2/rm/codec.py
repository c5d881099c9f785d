"""The RM RPC wire format: the 8-byte header, fragmentation and reassembly (docs/rm.md section 1).

Only bytes here: no message IDs are interpreted and no RM state is touched.  Each message-queue
message is at most 240 bytes: an 8-byte header and up to 232 bytes of content.  A payload longer
than that is sent as a first message (type request, reply or notification) followed by
`fragments` continuation messages (type 0) carrying the same seq, msg_id and fragment count.

Senders differ in how many continuations they use (rm.md 1.1):
- the RM and Linux v17: ceil(size / 232) - 1 continuations (none for an empty payload);
- Linux v6: size // 232, i.e. an extra, empty continuation when the size is a non-zero multiple
  of 232.
The reassembler accepts both: it waits for exactly the announced number of continuations.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from enum import IntEnum

log = logging.getLogger("gunyah_sim.rm")

API_VERSION = 1
HEADER_WORDS = 2
HEADER_SIZE = 8
MESSAGE_SIZE = 240                       # RM_RPC_MESSAGE_SIZE, also the msgq message size
CONTENT_SIZE = MESSAGE_SIZE - HEADER_SIZE    # 232 bytes of content per message
MAX_FRAGMENTS = 62                       # continuations after the first message
MAX_PAYLOAD = CONTENT_SIZE * (MAX_FRAGMENTS + 1)   # 14616 bytes
ERR_SIZE = 4                             # the u32 RM error code at the start of a reply

_HEADER = struct.Struct("<BBHI")


class MsgType(IntEnum):
    CONTINUATION = 0
    REQUEST = 1
    REPLY = 2
    NOTIFICATION = 3


class Malformed(Exception):
    """A message-queue message that is not a valid RM RPC message (it is dropped)."""


@dataclass(frozen=True)
class Header:
    type: MsgType
    fragments: int        # continuation messages that follow the first one (0..62)
    seq: int
    msg_id: int

    def pack(self) -> bytes:
        if not 0 <= self.fragments <= MAX_FRAGMENTS:
            raise ValueError(f"{self.fragments} fragments (at most {MAX_FRAGMENTS})")
        return _HEADER.pack(API_VERSION | HEADER_WORDS << 4, int(self.type) | self.fragments << 2,
                            self.seq & 0xFFFF, self.msg_id & 0xFFFF_FFFF)

    @classmethod
    def unpack(cls, message: bytes) -> "Header":
        """The header of `message`, or Malformed (the RM's own checks, rm.md 1)."""
        if len(message) < HEADER_SIZE:
            raise Malformed(f"{len(message)}-byte message is shorter than the header")
        b0, b1, seq, msg_id = _HEADER.unpack_from(message)
        if b0 & 0xF != API_VERSION:
            raise Malformed(f"API version {b0 & 0xF} (expected {API_VERSION})")
        if b0 >> 4 != HEADER_WORDS:
            raise Malformed(f"{b0 >> 4} header words (expected {HEADER_WORDS})")
        fragments = b1 >> 2
        if fragments > MAX_FRAGMENTS:
            raise Malformed(f"{fragments} fragments (at most {MAX_FRAGMENTS})")
        return cls(MsgType(b1 & 3), fragments, seq, msg_id)


# --- sending --------------------------------------------------------------------------------
def continuations(size: int, sender: str = "rm") -> int:
    """How many continuation messages a sender uses for a `size`-byte payload.

    sender: "rm" and "v17" (no trailing empty continuation) or "v6" (size // 232).
    """
    if sender == "v6":
        return size // CONTENT_SIZE
    if sender in ("rm", "v17"):
        return (size - 1) // CONTENT_SIZE if size else 0
    raise ValueError(f"unknown sender {sender!r}")


def fragment(msg_type: MsgType, msg_id: int, seq: int, payload: bytes,
             sender: str = "rm") -> list[bytes]:
    """Split one RPC message into message-queue messages (each <= 240 bytes)."""
    conts = continuations(len(payload), sender)
    if conts > MAX_FRAGMENTS:
        raise ValueError(f"{len(payload)}-byte payload needs {conts} continuations "
                         f"(at most {MAX_FRAGMENTS})")
    out = []
    for i in range(conts + 1):
        kind = msg_type if i == 0 else MsgType.CONTINUATION
        chunk = payload[i * CONTENT_SIZE:(i + 1) * CONTENT_SIZE]
        out.append(Header(kind, conts, seq, msg_id).pack() + chunk)
    return out


def reply_payload(error: int, data: bytes = b"") -> bytes:
    """A reply's content: the u32 RM error code, then the data."""
    return struct.pack("<I", int(error) & 0xFFFF_FFFF) + data


def encode_reply(msg_id: int, seq: int, error: int, data: bytes = b"") -> list[bytes]:
    return fragment(MsgType.REPLY, msg_id, seq, reply_payload(error, data))


def encode_notification(msg_id: int, seq: int, payload: bytes) -> list[bytes]:
    return fragment(MsgType.NOTIFICATION, msg_id, seq, payload)


def encode_request(msg_id: int, seq: int, payload: bytes, abi: str = "v17") -> list[bytes]:
    """A request as the given Linux driver generation fragments it (for tests and payloads)."""
    return fragment(MsgType.REQUEST, msg_id, seq, payload, sender=abi)


# --- receiving ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Complete:
    """A whole RPC message: the first header's type, seq and msg_id, and the joined content."""
    type: MsgType
    seq: int
    msg_id: int
    payload: bytes


@dataclass(frozen=True)
class Pending:
    """A fragment was stored; `remaining` continuations are still expected."""
    remaining: int


@dataclass(frozen=True)
class Dropped:
    """The message was ignored (logged); the reassembler state is as it was before."""
    reason: str


Decoded = Complete | Pending | Dropped


@dataclass
class _Partial:
    header: Header
    chunks: list
    remaining: int


class Reassembler:
    """Joins the fragments of incoming messages, one message at a time, as the RM does.

    A new first message while another is incomplete aborts the incomplete one (the RM drops
    its buffer); a continuation that does not match the message being assembled, or arrives
    when none is, is dropped.  `feed` never raises.
    """

    def __init__(self, name: str = "rm"):
        self.name = name
        self._partial: _Partial | None = None

    @property
    def in_progress(self) -> Header | None:
        return self._partial.header if self._partial else None

    def feed(self, message: bytes) -> Decoded:
        try:
            return self._feed(bytes(message))
        except Malformed as why:
            return self._drop(str(why))
        except Exception as bug:                 # never let a bug escape into the hypercall
            log.exception("%s: reassembly failed", self.name)
            return Dropped(f"internal error: {bug!r}")

    def _drop(self, reason: str) -> Dropped:
        log.info("%s: message dropped: %s", self.name, reason)
        return Dropped(reason)

    def _feed(self, message: bytes) -> Decoded:
        if len(message) > MESSAGE_SIZE:
            return self._drop(f"{len(message)}-byte message exceeds {MESSAGE_SIZE} bytes")
        header = Header.unpack(message)
        content = message[HEADER_SIZE:]
        if header.type != MsgType.CONTINUATION:
            if self._partial is not None:
                log.info("%s: incomplete message %#x seq %d aborted by a new one", self.name,
                         self._partial.header.msg_id, self._partial.header.seq)
                self._partial = None
            if header.fragments == 0:
                return Complete(header.type, header.seq, header.msg_id, content)
            self._partial = _Partial(header, [content], header.fragments)
            return Pending(header.fragments)
        partial = self._partial
        if partial is None:
            return self._drop("continuation without a message in progress")
        first = partial.header
        if (header.msg_id, header.seq, header.fragments) != (first.msg_id, first.seq,
                                                             first.fragments):
            return self._drop(f"continuation {header.msg_id:#x} seq {header.seq} does not "
                              f"match {first.msg_id:#x} seq {first.seq}")
        partial.chunks.append(content)
        partial.remaining -= 1
        if partial.remaining:
            return Pending(partial.remaining)
        self._partial = None
        return Complete(first.type, first.seq, first.msg_id, b"".join(partial.chunks))
