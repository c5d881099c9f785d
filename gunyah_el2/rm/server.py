"""The Resource Manager's RPC endpoint: message-queue messages in, replies and notifications out.

`receive(message)` takes each message the primary VM sent on its RM TX queue; a complete
request is dispatched to its handler and the reply is fragmented into the outbound backlog.
`send(message)` puts one message into the RM -> primary queue and returns False when that queue
is full; the backlog then waits until `pump()` is called (when the queue has room again), so a
reply of more fragments than the queue holds is delivered completely as the guest drains it.
Messages are sent in order, whole RPC messages never interleave.

Malformed input is dropped and logged (docs/rm.md 1) unless the real RM answers it:
an unknown message ID gets UNIMPLEMENTED, a bad request payload MSG_INVALID.  A request that
reuses the seq of a request whose reply is still in the backlog is dropped.  Nothing raises.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Callable

from . import codec, handlers
from . import messages as m
from .codec import Complete, MsgType
from .errors import RmError, RmFailure
from .state import VMID_HLOS, Hooks, RmState

log = logging.getLogger("gunyah_sim.rm")


class ResourceManager:
    def __init__(self, abi: str, send: Callable[[bytes], bool | None], *,
                 hooks: Hooks | None = None, primary_vmid: int = VMID_HLOS, tracer=None,
                 **state_options):
        if abi not in ("v6", "v17"):
            raise ValueError(f"unknown ABI {abi!r}")
        self.abi = abi
        self.primary = primary_vmid
        self._send = send
        self.tracer = tracer
        self.state = RmState(hooks, primary_vmid=primary_vmid, notify=self.notify,
                             **state_options)
        self.reassembler = codec.Reassembler("rm")
        self.backlog: deque[tuple[bytes, int | None]] = deque()   # (message, reply seq or None)
        self._undelivered = Counter()        # seq -> reply messages still in the backlog
        self._notify_seq = 0
        self.dropped = 0                     # incoming messages ignored, for reports

    # --- inbound ------------------------------------------------------------------------------
    def receive(self, message: bytes) -> None:
        try:
            self._receive(bytes(message))
        except Exception:                    # a bug here must not take the hypercall down
            log.exception("RM: failed to handle a %d-byte message", len(message))
        self.pump()

    def _receive(self, message: bytes) -> None:
        got = self.reassembler.feed(message)
        if isinstance(got, codec.Dropped):
            self.dropped += 1
            return
        if not isinstance(got, Complete):
            return
        if got.type != MsgType.REQUEST:
            self.dropped += 1
            log.info("RM: %s %s from the primary VM ignored", got.type.name.lower(),
                     m.name_of(got.msg_id))
            return
        if self._undelivered[got.seq]:
            self.dropped += 1
            log.warning("RM: request %s reuses seq %d, whose reply is still queued: dropped",
                        m.name_of(got.msg_id), got.seq)
            return
        self._trace("recv", "request", got.msg_id, got.seq, len(got.payload))
        error, data = self.dispatch(got.msg_id, got.payload)
        self._queue_reply(got.msg_id, got.seq, error, data)
        self.state.run_deferred()

    def dispatch(self, msg_id: int, payload: bytes, caller: int | None = None
                 ) -> tuple[RmError, bytes]:
        """Run one request; returns the error code and the reply data."""
        caller = self.primary if caller is None else caller
        msg = handlers.BY_ID.get(msg_id)
        if msg is None:
            log.warning("RM: unknown request %#010x (%d bytes): UNIMPLEMENTED", msg_id,
                        len(payload))
            return RmError.UNIMPLEMENTED, b""
        try:
            data = msg.handler(self.state, self.abi, caller, payload)
        except RmFailure as failure:
            log.info("RM: %s failed: %s", msg.name, failure)
            return failure.error, b""
        except Exception:
            log.exception("RM: %s handler crashed; answering UNIMPLEMENTED", msg.name)
            return RmError.UNIMPLEMENTED, b""
        log.debug("RM: %s OK (%d bytes of reply data)", msg.name, len(data))
        return RmError.OK, data

    # --- outbound -----------------------------------------------------------------------------
    def _queue_reply(self, msg_id: int, seq: int, error: RmError, data: bytes) -> None:
        if codec.ERR_SIZE + len(data) > codec.MAX_PAYLOAD:
            log.error("RM: %s reply of %d bytes does not fit an RPC message", m.name_of(msg_id),
                      len(data))
            error, data = RmError.NOMEM, b""
        self._trace("send", "reply", msg_id, seq, len(data), error)
        for message in codec.encode_reply(msg_id, seq, error, data):
            self.backlog.append((message, seq))
            self._undelivered[seq] += 1

    def notify(self, vmid: int, note: m.Notification) -> None:
        """Send a notification to VM `vmid` (only the primary VM has an RM queue)."""
        if vmid != self.primary:
            log.debug("RM: %s for VM %d, which has no RM channel", type(note).__name__, vmid)
            return
        seq, self._notify_seq = self._notify_seq, (self._notify_seq + 1) & 0xFFFF
        payload = note.encode(self.abi)
        self._trace("send", "notification", note.MSG_ID, seq, len(payload))
        for message in codec.encode_notification(note.MSG_ID, seq, payload):
            self.backlog.append((message, None))
        self.pump()           # also when the state changes outside a request (a VM exits)

    def pump(self) -> None:
        """Move backlog messages into the queue until it is full or the backlog empty."""
        while self.backlog:
            message, seq = self.backlog[0]
            try:
                if self._send(message) is False:
                    return
            except Exception as err:             # e.g. the queue reports FULL by raising
                log.debug("RM: send deferred: %s", err)
                return
            self.backlog.popleft()
            if seq is not None:
                self._undelivered[seq] -= 1
                if not self._undelivered[seq]:
                    del self._undelivered[seq]

    def _trace(self, direction: str, kind: str, msg_id: int, seq: int, size: int,
               error: int | None = None) -> None:
        if self.tracer is not None and hasattr(self.tracer, "rpc"):
            self.tracer.rpc(direction, kind, msg_id, seq, size, name=m.name_of(msg_id),
                            error=None if error is None else int(error))
