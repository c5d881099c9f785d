"""Return codes: SMCCC's, and the Gunyah hypervisor's own error enumeration (docs/abi.md)."""
from __future__ import annotations

from enum import IntEnum

SMCCC_SUCCESS = 0
SMCCC_NOT_SUPPORTED = -1


class GunyahError(IntEnum):
    """Values the hypervisor returns in x0 of a Gunyah hypercall."""
    OK = 0
    UNIMPLEMENTED = -1
    RETRY = -2
    ARG_INVAL = 1
    ARG_SIZE = 2
    ARG_ALIGN = 3
    NOMEM = 10
    ADDR_OVFL = 20
    ADDR_UNFL = 21
    ADDR_INVAL = 22
    DENIED = 30
    BUSY = 31
    IDLE = 32
    IRQ_BOUND = 40
    IRQ_UNBOUND = 41
    CSPACE_CAP_NULL = 50
    CSPACE_CAP_REVOKED = 51
    CSPACE_WRONG_OBJ_TYPE = 52
    CSPACE_INSUF_RIGHTS = 53
    CSPACE_FULL = 54
    MSGQUEUE_EMPTY = 60
    MSGQUEUE_FULL = 61


class HypercallFailed(Exception):
    """Raised by a handler to answer the call with a Gunyah error code (not a crash)."""

    def __init__(self, error: GunyahError, why: str = ""):
        super().__init__(f"{error.name}: {why}" if why else error.name)
        self.error = error
