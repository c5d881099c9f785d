"""Resource Manager error codes: the u32 that starts every RM reply (docs/rm.md section 2)."""
from __future__ import annotations

from enum import IntEnum


class RmError(IntEnum):
    OK = 0x0
    NOMEM = 0x1
    NORESOURCE = 0x2
    DENIED = 0x3
    MSG_INVALID = 0x4
    BUSY = 0x5
    ARGUMENT_INVALID = 0x6
    HANDLE_INVALID = 0x7
    VALIDATE_FAILED = 0x8
    MAP_FAILED = 0x9
    MEM_INVALID = 0xA
    MEM_INUSE = 0xB
    MEM_RELEASED = 0xC
    VMID_INVALID = 0xD
    LOOKUP_FAILED = 0xE
    IRQ_INVALID = 0xF
    IRQ_INUSE = 0x10
    IRQ_RELEASED = 0x11
    IN_USE = 0x12
    IRQ_NOT_MAPPED = 0x13
    VM_STATE = 0x14
    UNIMPLEMENTED = 0xFFFF_FFFF


class RmFailure(Exception):
    """Raised by decoding or by the RM state to answer a request with an RM error code.

    Whoever raises it must not have changed any state yet.
    """

    def __init__(self, error: RmError, why: str = ""):
        super().__init__(f"{error.name}: {why}" if why else error.name)
        self.error = error
