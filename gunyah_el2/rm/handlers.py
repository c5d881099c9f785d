"""One handler per RM request: decode the payload, apply it to the RM state, encode the reply.

A handler takes (state, abi, caller VMID, request payload) and returns the reply data that
follows the error word; it raises RmFailure for an error reply.  `MESSAGES` is the table the
server dispatches on and docs/rm.md's "as implemented" table is generated from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import messages as m
from .state import RmState

Handler = Callable[[RmState, str, int, bytes], bytes]


def vm_alloc_vmid(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    vmid, dynamic = st.alloc_vmid(caller, m.VmidRequest.decode(data, abi).vmid)
    return m.U32Reply(vmid).encode(abi) if dynamic else b""


def vm_dealloc_vmid(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.dealloc_vmid(caller, m.VmidRequest.decode(data, abi).vmid)
    return b""


def vm_start(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.start(caller, m.VmidRequest.decode(data, abi).vmid)
    return b""


def vm_stop(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.stop(caller, m.VmStopRequest.decode(data, abi))
    return b""


def vm_reset(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.reset(caller, m.VmidRequest.decode(data, abi).vmid)
    return b""


def vm_config_image(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.config_image(caller, m.ConfigImageRequest.decode(data, abi))
    return b""


def vm_init(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.init(caller, m.VmInitRequest.decode(data, abi).vmid)
    return b""


def vm_get_hyp_resources(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    entries = st.get_hyp_resources(caller, m.VmidRequest.decode(data, abi).vmid)
    return m.HypResourcesReply(tuple(entries)).encode(abi)


def vm_get_vmid(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    m.GetVmidRequest.decode(data, abi)
    return m.GetVmidReply(st.get_vmid(caller)).encode(abi)


def vm_set_boot_context(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.set_boot_context(caller, m.SetBootContextRequest.decode(data, abi))
    return b""


def vm_set_firmware_mem(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.set_firmware_mem(caller, m.SetFirmwareMemRequest.decode(data, abi))
    return b""


def vm_set_demand_paging(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.set_demand_paging(caller, m.SetDemandPagingRequest.decode(data, abi))
    return b""


def vm_set_address_layout(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.set_address_layout(caller, m.SetAddressLayoutRequest.decode(data, abi))
    return b""


def _create(trans: int) -> Handler:
    def mem_create(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
        handle = st.create_parcel(caller, trans, m.MemParcelRequest.decode(data, abi))
        return m.U32Reply(handle).encode(abi)
    return mem_create


mem_lend = _create(m.TRANS_LEND)
mem_share = _create(m.TRANS_SHARE)
mem_donate = _create(m.TRANS_DONATE)


def mem_append(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.append(caller, m.MemAppendRequest.decode(data, abi))
    return b""


def mem_reclaim(st: RmState, abi: str, caller: int, data: bytes) -> bytes:
    st.reclaim(caller, m.MemReclaimRequest.decode(data, abi))
    return b""


@dataclass(frozen=True)
class Message:
    msg_id: int
    handler: Handler
    request: str        # request layout, for the docs
    reply: str          # reply data layout (after the error word)
    errors: str         # error codes this handler can return besides MSG_INVALID
    abis: tuple = ("v6", "v17")

    @property
    def name(self) -> str:
        return m.name_of(self.msg_id)


_VM = "VMID_INVALID (no such VM)"
MESSAGES: tuple[Message, ...] = (
    Message(m.VM_ALLOC_VMID, vm_alloc_vmid, "u16 vmid (0: any), u16 0",
            "vmid 0: u32 vmid; else empty", "DENIED (not the primary VM), NORESOURCE (no "
            "dynamic VMID free 0x80..0xBF, or the requested one is taken, reserved or >= 64)"),
    Message(m.VM_DEALLOC_VMID, vm_dealloc_vmid, "u16 vmid, u16 0", "empty",
            f"{_VM}, DENIED (not the owner), VM_STATE (not LOAD or RESET)", ("v17",)),
    Message(m.VM_START, vm_start, "u16 vmid, u16 0", "empty",
            f"{_VM}, DENIED (not the owner), VM_STATE (not READY), a start hook's error "
            "(VM goes to INIT_FAILED)"),
    Message(m.VM_STOP, vm_stop, "u16 vmid, u8 flags (bit0 FORCE), u8 0, u32 reason", "empty",
            "VMID_INVALID (no such VM or not the owner), VM_STATE (not RUNNING/PAUSED)"),
    Message(m.VM_RESET, vm_reset, "u16 vmid, u16 0", "empty",
            "VMID_INVALID (no such VM or not the owner), VM_STATE (not EXITED, READY or "
            "INIT_FAILED)", ("v17",)),
    Message(m.VM_CONFIG_IMAGE, vm_config_image, "u16 vmid, u16 auth, u32 handle, u64 "
            "image_offset, u64 image_size, u64 dtb_offset, u64 dtb_size (40)", "empty",
            f"DENIED (not the primary/owner), {_VM}, VM_STATE (not LOAD or RESET), "
            "MEM_INVALID (handle is not a complete parcel lent/shared to the VM), "
            "ARGUMENT_INVALID (image or DTB outside the parcel)"),
    Message(m.VM_INIT, vm_init, "u16 vmid, u16 0 (must be 0)", "empty",
            f"DENIED (not the primary/owner), {_VM}, VM_STATE (not INIT), an init hook's "
            "error (VM goes to INIT_FAILED)"),
    Message(m.VM_GET_HYP_RESOURCES, vm_get_hyp_resources, "u16 vmid, u16 0",
            "u32 n, n x 44-byte entries", f"{_VM}, DENIED (neither the owner nor the VM)",
            ("v17",)),
    Message(m.VM_GET_VMID, vm_get_vmid, "v6: 4 zero bytes (or empty); v17: empty",
            "v6: u16 vmid; v17: u32 vmid", "none"),
    Message(m.VM_SET_BOOT_CONTEXT, vm_set_boot_context, "v6: u16 vmid, u8 set, u8 index, "
            "u64 value (12); v17: u16 vmid, u8 set, u8 index, u32 0, u64 value (16)", "empty",
            f"{_VM}, DENIED (not the owner), VM_STATE (not READY), ARGUMENT_INVALID (set "
            "0: index < 32, sets 1, 2: index 0)", ("v17",)),
    Message(m.VM_SET_FIRMWARE_MEM, vm_set_firmware_mem, "u16 vmid, u16 0 (must be 0), u32 "
            "handle, u64 offset, u64 size (24)", "empty",
            "NORESOURCE (no such VM), DENIED (not the owner), VM_STATE (not INIT), "
            "MEM_INVALID, ARGUMENT_INVALID (outside the parcel)", ("v17",)),
    Message(m.VM_SET_DEMAND_PAGING, vm_set_demand_paging, "u16 vmid, u16 0, u32 n, n x "
            "{u64 base, u64 size}", "empty", f"{_VM}, DENIED, VM_STATE (after INIT), "
            "ARGUMENT_INVALID (unaligned or empty range)", ("v17",)),
    Message(m.VM_SET_ADDRESS_LAYOUT, vm_set_address_layout, "u16 vmid, u16 0, u32 range_id, "
            "u64 base, u64 size (24)", "empty", f"{_VM}, DENIED, VM_STATE (after INIT), "
            "ARGUMENT_INVALID (range_id not 0/1, unaligned)", ("v17",)),
    Message(m.MEM_LEND, mem_lend, "parcel request (3.1)", "u32 handle",
            "see 3.3", ("v6", "v17")),
    Message(m.MEM_SHARE, mem_share, "parcel request (3.1)", "u32 handle", "see 3.3"),
    Message(m.MEM_DONATE, mem_donate, "parcel request (3.1), exactly 1 ACL entry with RWX",
            "u32 handle", "see 3.3", ()),
    Message(m.MEM_APPEND, mem_append, "u32 handle, u8 flags (bit0 END), 3 x 0, u16 n, u16 0, "
            "n x {u64 address, u64 size}", "empty",
            "ARGUMENT_INVALID (no entries), HANDLE_INVALID, DENIED (not the owner, or the "
            "parcel was not created with APPEND or is complete), MEM_INVALID, NORESOURCE "
            "(> 512 entries)"),
    Message(m.MEM_RECLAIM, mem_reclaim, "u32 handle, u8 flags (bit0 sanitize), 3 x 0", "empty",
            "HANDLE_INVALID, DENIED (not the owner), MEM_INUSE (a borrower still has it: its "
            "VM is RUNNING), ARGUMENT_INVALID (sanitize IO memory)"),
)

BY_ID = {msg.msg_id: msg for msg in MESSAGES}


def markdown_table() -> str:
    rows = ["| ID | Name | Request | Reply data (after err) | Errors (besides MSG_INVALID) "
            "| Sent by |", "|---|---|---|---|---|---|"]
    for msg in MESSAGES:
        rows.append(f"| `{msg.msg_id:#010x}` | {msg.name} | {msg.request} | {msg.reply} | "
                    f"{msg.errors} | {', '.join(msg.abis) or 'neither'} |")
    return "\n".join(rows) + "\n"
