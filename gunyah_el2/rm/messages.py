"""Typed payloads of the RM messages the Linux drivers use (layouts: docs/rm.md sections 3 and 4).

Each class decodes its payload (checking lengths; a bad request raises RmFailure with the error
the RM replies with, MSG_INVALID unless noted) and encodes it (for the RM's replies and
notifications, and for tests that play the Linux side).  All fields are little endian.  Where the
two Linux generations differ, `abi` ("v6" or "v17") selects the layout.
"""
from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, field
from typing import ClassVar

from .errors import RmError, RmFailure

# --- message IDs ------------------------------------------------------------------------------
MEM_DONATE = 0x51000010
MEM_LEND = 0x51000012
MEM_SHARE = 0x51000013
MEM_RECLAIM = 0x51000015
MEM_APPEND = 0x51000018
VM_ALLOC_VMID = 0x56000001
VM_DEALLOC_VMID = 0x56000002
VM_START = 0x56000004
VM_STOP = 0x56000005
VM_RESET = 0x56000006
VM_CONFIG_IMAGE = 0x56000009
VM_INIT = 0x5600000B
VM_GET_HYP_RESOURCES = 0x56000020
VM_GET_VMID = 0x56000024
VM_SET_BOOT_CONTEXT = 0x56000031
VM_SET_FIRMWARE_MEM = 0x56000032
VM_SET_DEMAND_PAGING = 0x56000033
VM_SET_ADDRESS_LAYOUT = 0x56000034
# notifications (RM -> VM)
NOTIFY_VM_EXITED = 0x56100001
NOTIFY_VM_STATUS = 0x56100008
NOTIFY_MEM_SHARED = 0x51100011
NOTIFY_MEM_RELEASED = 0x51100012
NOTIFY_MEM_ACCEPTED = 0x51100013

NAMES = {v: k for k, v in dict(globals()).items()
         if k.isupper() and isinstance(v, int) and (k.startswith(("VM_", "MEM_", "NOTIFY_")))}

MAX_LIST_ENTRIES = 512        # ACL, SGL and attribute lists (RMSRC include/memparcel.h)


def name_of(msg_id: int) -> str:
    return NAMES.get(msg_id, f"{msg_id:#010x}")


def _invalid(what: str, data: bytes, expected: str) -> RmFailure:
    return RmFailure(RmError.MSG_INVALID, f"{what}: {len(data)} bytes, expected {expected}")


class Fixed:
    """A payload with one fixed layout per ABI; the dataclass fields in layout order."""
    LAYOUT: ClassVar[struct.Struct]

    @classmethod
    def layout(cls, abi: str) -> struct.Struct:
        return cls.LAYOUT

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17"):
        layout = cls.layout(abi)
        if len(data) != layout.size:
            raise _invalid(cls.__name__, data, str(layout.size))
        return cls(*layout.unpack(data))

    def encode(self, abi: str = "v17") -> bytes:
        return self.layout(abi).pack(*astuple(self))


# --- requests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VmidRequest(Fixed):
    """u16 vmid, u16 reserved: ALLOC_VMID (0 = any), DEALLOC_VMID, START, RESET,
    GET_HYP_RESOURCES.  The RM ignores the reserved half."""
    LAYOUT = struct.Struct("<H2x")
    vmid: int


@dataclass(frozen=True)
class VmInitRequest(Fixed):
    """VM_INIT: like VmidRequest, but the RM requires the reserved half to be 0."""
    LAYOUT = struct.Struct("<HH")
    vmid: int
    reserved: int = 0

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17"):
        req = super().decode(data, abi)
        if req.reserved:
            raise RmFailure(RmError.MSG_INVALID, f"VM_INIT reserved {req.reserved:#x}")
        return req


STOP_FLAG_FORCE = 1 << 0


@dataclass(frozen=True)
class VmStopRequest(Fixed):
    LAYOUT = struct.Struct("<HBxI")
    vmid: int
    flags: int = 0
    reason: int = 0


AUTH_NONE, AUTH_PIL_ELF, AUTH_ANDROID_PVM = 0, 1, 2


@dataclass(frozen=True)
class ConfigImageRequest(Fixed):
    LAYOUT = struct.Struct("<HHIQQQQ")
    vmid: int
    auth: int
    mem_handle: int
    image_offset: int
    image_size: int
    dtb_offset: int
    dtb_size: int


@dataclass(frozen=True)
class GetVmidRequest:
    """VM_GET_VMID: v6 sends a 4-byte zero, v17 (and the real RM) an empty payload."""

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "GetVmidRequest":
        allowed = (0, 4) if abi == "v6" else (0,)
        if len(data) not in allowed:
            raise _invalid("GetVmidRequest", data, " or ".join(map(str, allowed)))
        return cls()

    def encode(self, abi: str = "v17") -> bytes:
        return bytes(4) if abi == "v6" else b""


REG_SET_X, REG_SET_PC, REG_SET_SP_EL1 = 0, 1, 2


@dataclass(frozen=True)
class SetBootContextRequest(Fixed):
    """v6: u16 vmid, u8 reg_set, u8 index, u32 value_lo, u32 value_hi (12 bytes);
    v17: u16 vmid, u8 reg_set, u8 index, u32 0, u64 value (16 bytes)."""
    V6 = struct.Struct("<HBBQ")       # value_lo, value_hi = one little-endian u64
    V17 = struct.Struct("<HBB4xQ")
    vmid: int
    reg_set: int
    reg_index: int
    value: int

    @classmethod
    def layout(cls, abi: str) -> struct.Struct:
        return cls.V6 if abi == "v6" else cls.V17


@dataclass(frozen=True)
class SetFirmwareMemRequest(Fixed):
    LAYOUT = struct.Struct("<HHIQQ")
    vmid: int
    reserved: int
    mem_handle: int
    offset: int
    size: int

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17"):
        req = super().decode(data, abi)
        if req.reserved:
            raise RmFailure(RmError.MSG_INVALID, f"reserved {req.reserved:#x}")
        return req


_RANGE = struct.Struct("<QQ")


@dataclass(frozen=True)
class SetDemandPagingRequest:
    """u16 vmid, u16 0, u32 count, count x {u64 base, u64 size}."""
    HEAD: ClassVar = struct.Struct("<H2xI")
    vmid: int
    ranges: tuple = ()

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "SetDemandPagingRequest":
        if len(data) < cls.HEAD.size:
            raise _invalid(cls.__name__, data, f">= {cls.HEAD.size}")
        vmid, count = cls.HEAD.unpack_from(data)
        if len(data) != cls.HEAD.size + count * _RANGE.size:
            raise _invalid(cls.__name__, data, f"8 + 16 x {count}")
        return cls(vmid, tuple(_RANGE.iter_unpack(data[cls.HEAD.size:])))

    def encode(self, abi: str = "v17") -> bytes:
        return self.HEAD.pack(self.vmid, len(self.ranges)) + b"".join(
            _RANGE.pack(*r) for r in self.ranges)


RANGE_IMAGE, RANGE_FIRMWARE = 0, 1


@dataclass(frozen=True)
class SetAddressLayoutRequest(Fixed):
    LAYOUT = struct.Struct("<H2xIQQ")
    vmid: int
    range_id: int
    base: int
    size: int


# --- memory parcels ---------------------------------------------------------------------------
RIGHT_X, RIGHT_W, RIGHT_R = 1, 2, 4
MEM_TYPE_NORMAL, MEM_TYPE_IO = 0, 1
PARCEL_FLAG_SANITIZE = 1 << 0
PARCEL_FLAG_APPEND = 1 << 1         # more SGL entries follow in MEM_APPEND
APPEND_FLAG_END = 1 << 0
RECLAIM_FLAG_SANITIZE = 1 << 0

_ACL = struct.Struct("<HBx")        # vmid, rights
_ATTR = struct.Struct("<HH")        # attr, vmid


def _read_list(data: bytes, off: int, entry: struct.Struct) -> tuple[tuple, int]:
    """One counted list as the RM reads it: u16 count, u16 ignored, entries (4-byte aligned).

    A list that would start at the end of the payload is empty.  More than 512 entries is
    NORESOURCE; a truncated list MSG_INVALID.
    """
    if off == len(data):
        return (), off
    if len(data) - off < 4:
        raise RmFailure(RmError.MSG_INVALID, f"list count truncated at offset {off}")
    (count,) = struct.unpack_from("<H", data, off)
    if count > MAX_LIST_ENTRIES:
        raise RmFailure(RmError.NORESOURCE, f"{count} list entries (at most 512)")
    end = off + 4 + count * entry.size
    if end > len(data):
        raise RmFailure(RmError.MSG_INVALID, f"list of {count} truncated at offset {off}")
    items = tuple(entry.unpack_from(data, off + 4 + i * entry.size) for i in range(count))
    return items, end + (-end % 4)


def _list(items, entry: struct.Struct, count_format: str = "<HH") -> bytes:
    head = struct.pack(count_format, len(items), 0) if count_format == "<HH" else \
        struct.pack(count_format, len(items))
    return head + b"".join(entry.pack(*item) for item in items)


def _acl_list(acl, abi: str) -> bytes:
    # v6 writes the ACL count as a u32, v17 as a u16 and a zero u16: the same bytes for any
    # count the RM accepts.  The RM reads a u16 and ignores the upper half.
    return _list(acl, _ACL, "<I" if abi == "v6" else "<HH")


@dataclass(frozen=True)
class MemParcelRequest:
    """MEM_LEND / MEM_SHARE / MEM_DONATE (docs/rm.md 3.1).

    acl: ((vmid, rights), ...); sgl: ((address, size), ...); attrs: ((attr, vmid), ...).
    """
    HEAD: ClassVar = struct.Struct("<BxBxI")
    MIN_SIZE: ClassVar = 20
    mem_type: int = MEM_TYPE_NORMAL
    flags: int = 0
    label: int = 0
    acl: tuple = ()
    sgl: tuple = ()
    attrs: tuple = ()

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "MemParcelRequest":
        if len(data) < cls.MIN_SIZE:
            raise _invalid(cls.__name__, data, f">= {cls.MIN_SIZE}")
        mem_type, flags, label = cls.HEAD.unpack_from(data)
        acl, off = _read_list(data, cls.HEAD.size, _ACL)
        sgl, off = _read_list(data, off, _RANGE)
        attrs, off = _read_list(data, off, _ATTR)
        if off != len(data):
            raise _invalid(cls.__name__, data, f"{off} (trailing bytes)")
        return cls(mem_type, flags, label, acl, sgl, attrs)

    def encode(self, abi: str = "v17") -> bytes:
        return (self.HEAD.pack(self.mem_type, self.flags, self.label) + _acl_list(self.acl, abi)
                + _list(self.sgl, _RANGE) + _list(self.attrs, _ATTR))


@dataclass(frozen=True)
class MemReclaimRequest:
    """u32 handle, u8 flags, 3 x 0 (the RM ignores bytes after the first 8)."""
    LAYOUT: ClassVar = struct.Struct("<IB3x")
    handle: int
    flags: int = 0

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "MemReclaimRequest":
        if len(data) < cls.LAYOUT.size:
            raise _invalid(cls.__name__, data, ">= 8")
        return cls(*cls.LAYOUT.unpack_from(data))

    def encode(self, abi: str = "v17") -> bytes:
        return self.LAYOUT.pack(self.handle, self.flags)


@dataclass(frozen=True)
class MemAppendRequest:
    """u32 handle, u8 flags (bit0 END), 3 x 0, then an SGL list (<= 512 entries)."""
    HEAD: ClassVar = struct.Struct("<IB3x")
    MIN_SIZE: ClassVar = 12
    handle: int
    flags: int = 0
    sgl: tuple = ()

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "MemAppendRequest":
        if len(data) < cls.MIN_SIZE:
            raise _invalid(cls.__name__, data, f">= {cls.MIN_SIZE}")
        handle, flags = cls.HEAD.unpack_from(data)
        sgl, off = _read_list(data, cls.HEAD.size, _RANGE)
        if off != len(data):
            raise _invalid(cls.__name__, data, f"{off} (trailing bytes)")
        return cls(handle, flags, sgl)

    def encode(self, abi: str = "v17") -> bytes:
        return self.HEAD.pack(self.handle, self.flags) + _list(self.sgl, _RANGE)


# --- replies (the data after the u32 error code) ---------------------------------------------
@dataclass(frozen=True)
class EmptyReply:
    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "EmptyReply":
        if data:
            raise _invalid(cls.__name__, data, "0")
        return cls()

    def encode(self, abi: str = "v17") -> bytes:
        return b""


@dataclass(frozen=True)
class U32Reply(Fixed):
    """A u32: the VMID of a dynamic VM_ALLOC_VMID, or a MEM_LEND/SHARE/DONATE handle."""
    LAYOUT = struct.Struct("<I")
    value: int


@dataclass(frozen=True)
class GetVmidReply(Fixed):
    """The caller's VMID: v6 reads exactly a u16, v17 (and the real RM) a u32."""
    vmid: int

    @classmethod
    def layout(cls, abi: str) -> struct.Struct:
        return struct.Struct("<H" if abi == "v6" else "<I")


RES_BELL_TX, RES_BELL_RX, RES_MSGQ_TX, RES_MSGQ_RX, RES_VCPU = 0, 1, 2, 3, 4
RES_MEM_EXTENT, RES_ADDR_SPACE = 9, 10


@dataclass(frozen=True)
class HypResource(Fixed):
    """One 44-byte GET_HYP_RESOURCES entry (docs/rm.md 3.2)."""
    LAYOUT = struct.Struct("<BxHIIQIIQQ")
    type: int
    partner_vmid: int = 0
    resource_handle: int = 0
    resource_label: int = 0
    cap_id: int = 0
    virq_handle: int = 0
    virq: int = 0
    base: int = 0
    size: int = 0


@dataclass(frozen=True)
class HypResourcesReply:
    """u32 n, then n x 44-byte entries; the size must be exactly 4 + 44 n."""
    entries: tuple = ()

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "HypResourcesReply":
        if len(data) < 4:
            raise _invalid(cls.__name__, data, ">= 4")
        (n,) = struct.unpack_from("<I", data)
        size = HypResource.LAYOUT.size
        if len(data) != 4 + n * size:
            raise _invalid(cls.__name__, data, f"4 + 44 x {n}")
        return cls(tuple(HypResource.decode(data[4 + i * size:4 + (i + 1) * size])
                         for i in range(n)))

    def encode(self, abi: str = "v17") -> bytes:
        return struct.pack("<I", len(self.entries)) + b"".join(e.encode() for e in self.entries)


# --- notifications ----------------------------------------------------------------------------
class Notification:
    MSG_ID: ClassVar[int]


@dataclass(frozen=True)
class VmStatusNotification(Fixed, Notification):
    MSG_ID = NOTIFY_VM_STATUS
    LAYOUT = struct.Struct("<H2xBBH")
    vmid: int
    vm_status: int
    os_status: int = 0
    app_status: int = 0


EXIT_VM_EXIT, EXIT_VM_STOP_FORCED = 0, 7
EXIT_CODE_NORMAL = 0


@dataclass(frozen=True)
class VmExitedNotification(Notification):
    """u16 vmid, u16 exit_type, u32 reason_size, reason (the RM: one word, flags | code << 16)."""
    MSG_ID = NOTIFY_VM_EXITED
    HEAD: ClassVar = struct.Struct("<HHI")
    vmid: int
    exit_type: int
    reason: bytes = field(default=bytes(4))

    @staticmethod
    def reason_word(flags: int = 0, exit_code: int = EXIT_CODE_NORMAL) -> bytes:
        return struct.pack("<I", (flags & 0xFFFF) | exit_code << 16)

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "VmExitedNotification":
        if len(data) < cls.HEAD.size:
            raise _invalid(cls.__name__, data, ">= 8")
        vmid, exit_type, size = cls.HEAD.unpack_from(data)
        if len(data) != cls.HEAD.size + size:
            raise _invalid(cls.__name__, data, f"8 + {size}")
        return cls(vmid, exit_type, data[cls.HEAD.size:])

    def encode(self, abi: str = "v17") -> bytes:
        return self.HEAD.pack(self.vmid, self.exit_type, len(self.reason)) + self.reason


TRANS_DONATE, TRANS_LEND, TRANS_SHARE = 0, 1, 2


@dataclass(frozen=True)
class MemSharedNotification(Notification):
    """To the borrowers of a parcel (RMSRC memparcel_shared_notif_t), then the parcel's lists."""
    MSG_ID = NOTIFY_MEM_SHARED
    HEAD: ClassVar = struct.Struct("<IBBBxH2xII")
    handle: int
    mem_type: int
    trans_type: int
    flags: int
    owner_vmid: int
    label: int
    mem_info_tag: int = 0
    acl: tuple = ()
    sgl: tuple = ()
    attrs: tuple = ()

    @classmethod
    def decode(cls, data: bytes, abi: str = "v17") -> "MemSharedNotification":
        if len(data) < cls.HEAD.size:
            raise _invalid(cls.__name__, data, f">= {cls.HEAD.size}")
        head = cls.HEAD.unpack_from(data)
        acl, off = _read_list(data, cls.HEAD.size, _ACL)
        sgl, off = _read_list(data, off, _RANGE)
        attrs, off = _read_list(data, off, _ATTR)
        if off != len(data):
            raise _invalid(cls.__name__, data, f"{off}")
        return cls(*head, acl, sgl, attrs)

    def encode(self, abi: str = "v17") -> bytes:
        return (self.HEAD.pack(self.handle, self.mem_type, self.trans_type, self.flags,
                               self.owner_vmid, self.label, self.mem_info_tag)
                + _list(self.acl, _ACL) + _list(self.sgl, _RANGE) + _list(self.attrs, _ATTR))


@dataclass(frozen=True)
class MemOwnerNotification(Fixed, Notification):
    """MEM_RELEASED / MEM_ACCEPTED, to a parcel's owner: u32 handle, u16 vmid, 2 x 0, u32 tag."""
    MSG_ID = NOTIFY_MEM_RELEASED
    LAYOUT = struct.Struct("<IH2xI")
    handle: int
    vmid: int
    mem_info_tag: int = 0


@dataclass(frozen=True)
class MemReleasedNotification(MemOwnerNotification):
    MSG_ID = NOTIFY_MEM_RELEASED


@dataclass(frozen=True)
class MemAcceptedNotification(MemOwnerNotification):
    MSG_ID = NOTIFY_MEM_ACCEPTED


NOTIFICATIONS = {cls.MSG_ID: cls for cls in (VmStatusNotification, VmExitedNotification,
                                             MemSharedNotification, MemReleasedNotification,
                                             MemAcceptedNotification)}
