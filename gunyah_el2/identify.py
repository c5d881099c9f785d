"""How a guest recognises Gunyah: the vendor-hypervisor UID call and hyp_identify.

The two driver generations compare the UID differently (docs/abi.md, "Detection"):
- v6 compares x0..x3 as four u32 words with a fixed list of two UIDs;
- v17 stores the low 32 bits of x0..x3 little-endian into a UUID and compares it with Gunyah's
  UUID c1d58fcd-a453-5fdb-9265-ce36673d5f14.
One answer cannot satisfy both, so ``--abi`` selects which one the hypervisor gives.
"""
from __future__ import annotations

import struct
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hypervisor import CallContext, Hypervisor

GUNYAH_UUID = uuid.UUID("c1d58fcd-a453-5fdb-9265-ce36673d5f14")
# v6: the open-source build's UID as the four u32 words v6 compares (x0..x3).
V6_GUNYAH_UID = (0x673D5F14, 0x9265CE36, 0xA4535FDB, 0xC1D58FCD)


def uid_registers(abi: str) -> tuple[int, int, int, int]:
    if abi == "v6":
        return V6_GUNYAH_UID
    # v17: x0..x3 are the UUID's 16 bytes read as four little-endian u32 words.
    return struct.unpack("<4I", GUNYAH_UUID.bytes)


# hyp_identify: x0 = api_info, x1..x3 = feature flag words.
API_VERSION = 1
API_INFO_IS_64BIT = 1 << 15
API_VARIANT_GUNYAH = 0x48                          # the open-source build (0x51: Qualcomm's)
API_INFO = API_VERSION | API_INFO_IS_64BIT | (API_VARIANT_GUNYAH << 56)   # little endian

FEATURE_BITS = {
    "cspace": 0, "doorbell": 1, "msgqueue": 2, "vic": 3, "vpm": 4, "vcpu": 5, "memextent": 6,
    "trace": 7, "watchdog": 8, "virtio_mmio": 9, "prng": 10, "vcpu_run": 11,
}


def vendor_hyp_call_uid(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    return uid_registers(hv.abi)


def vendor_hyp_revision(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    return (API_INFO,)


def hyp_identify(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    flags0 = 0
    for feature in hv.features:
        flags0 |= 1 << FEATURE_BITS[feature]
    return (API_INFO, flags0, 0, 0)
