"""Message queues: Gunyah's one-way, bounded, interrupt-signalled message transport.

A queue object has a depth (messages) and a maximum message size.  A VM holds capabilities
to it: the sender's (send right) and the receiver's (receive right), each bound to a virtual
interrupt of that VM.  The receiver's interrupt is raised when the queue becomes non-empty
(on a push, or when it is not empty anymore after being drained); the sender's when a full
queue gets space again.  Policy lives here; how an interrupt reaches the GIC is the backend's.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import GunyahError, HypercallFailed

if TYPE_CHECKING:
    from .hypervisor import CallContext, Hypervisor

log = logging.getLogger("gunyah_sim.msgq")

MAX_MSG_SIZE = 240        # bytes; what Linux's drivers allocate and what the RM queues use
DEFAULT_DEPTH = 8         # the RM's queues to the primary VM
NOT_EMPTY_THRESHOLD = 1   # the hypervisor's default; the RM never changes it
TX_FLAG_PUSH = 1 << 0     # other flag bits are ignored, as the real hypervisor does


@dataclass
class MessageQueue:
    name: str
    depth: int = DEFAULT_DEPTH
    max_msg_size: int = MAX_MSG_SIZE
    messages: deque = field(default_factory=deque)
    # Called with the queue when the receiver's / sender's interrupt should be raised.
    on_not_empty: Callable[["MessageQueue"], None] | None = None
    on_not_full: Callable[["MessageQueue"], None] | None = None
    # Called when a message arrives, for queues whose receiver is the hypervisor itself (RM).
    consumer: Callable[["MessageQueue", bytes], None] | None = None

    @property
    def full(self) -> bool:
        return len(self.messages) >= self.depth

    def send(self, data: bytes, push: bool = False) -> bool:
        """Queue one message; returns "ready" (not full afterwards).

        The receiver's interrupt is raised as the real hypervisor raises it: on a push, or
        when the count reaches the not-empty threshold (1: the empty -> non-empty edge).
        """
        if len(data) > self.max_msg_size:
            raise HypercallFailed(GunyahError.ARG_SIZE,
                                  f"{len(data)}-byte message, limit {self.max_msg_size}")
        if self.full:
            raise HypercallFailed(GunyahError.MSGQUEUE_FULL, f"{self.name} holds {self.depth}")
        self.messages.append(bytes(data))
        if self.consumer is not None:
            self.consumer(self, self.messages.popleft())
        elif (push or len(self.messages) == NOT_EMPTY_THRESHOLD) and self.on_not_empty:
            self.on_not_empty(self)
        return not self.full

    def receive(self, buf_size: int) -> tuple[bytes, bool]:
        """Dequeue one message; returns it and "ready" (more messages queued)."""
        if not self.messages:
            raise HypercallFailed(GunyahError.MSGQUEUE_EMPTY, self.name)
        if len(self.messages[0]) > buf_size:
            raise HypercallFailed(GunyahError.ARG_SIZE,
                                  f"{len(self.messages[0])}-byte message, buffer {buf_size}")
        data = self.messages.popleft()
        # The sender's interrupt: the count fell to the not-full threshold (depth - 1).
        if len(self.messages) == self.depth - 1 and self.on_not_full is not None:
            self.on_not_full(self)
        return data, bool(self.messages)


@dataclass(frozen=True)
class MsgqCap:
    """A capability to a message queue with one right: "send" or "receive"."""
    queue: MessageQueue
    right: str


def _lookup(hv: "Hypervisor", ctx: "CallContext", capid: int, right: str) -> MessageQueue:
    cap = hv.cspace_lookup(ctx, capid)    # undecodable: ARG_INVAL; empty slot: CAP_NULL
    if not isinstance(cap, MsgqCap):
        raise HypercallFailed(GunyahError.CSPACE_WRONG_OBJ_TYPE, f"capid {capid:#x}")
    if cap.right != right:
        raise HypercallFailed(GunyahError.CSPACE_INSUF_RIGHTS, f"capid {capid:#x} has no {right}")
    return cap.queue


def hvc_msgq_send(hv: "Hypervisor", ctx: "CallContext", capid: int, size: int, data: int,
                  send_flags: int) -> tuple[int, ...]:
    queue = _lookup(hv, ctx, capid, "send")
    if size > queue.max_msg_size:
        raise HypercallFailed(GunyahError.ARG_SIZE, f"{size} > {queue.max_msg_size}")
    payload = ctx.read_guest(data, size)
    ready = queue.send(payload, push=bool(send_flags & TX_FLAG_PUSH))
    return (GunyahError.OK, int(ready))


def hvc_msgq_recv(hv: "Hypervisor", ctx: "CallContext", capid: int, buffer: int,
                  buf_size: int) -> tuple[int, ...]:
    queue = _lookup(hv, ctx, capid, "receive")
    if not queue.messages:
        raise HypercallFailed(GunyahError.MSGQUEUE_EMPTY, queue.name)
    head = queue.messages[0]
    if len(head) > buf_size:
        raise HypercallFailed(GunyahError.ARG_SIZE, f"{len(head)}-byte message, buffer {buf_size}")
    ctx.write_guest(buffer, head)          # fault first: a bad buffer must not lose the message
    data, ready = queue.receive(buf_size)
    return (GunyahError.OK, len(data), int(ready))
