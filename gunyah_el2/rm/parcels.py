"""Memory parcels: lend, share, donate, append, reclaim, with page ownership and ACLs.

Ownership is tracked per page range.  Every page belongs to one VM: the primary VM unless it
was donated.  A page is in at most one parcel at a time (no double lend or share); a parcel's
pages belong to its owner; only the owner appends to or reclaims a parcel, and only while no
borrower has it accepted (a borrower accepts when its VM starts and is done when the VM stops
or is reset).  Accepting a donated parcel moves its pages to the recipient.

Checks and error codes follow the real RM's memparcel code (RMSRC src/memparcel/memparcel.c),
see docs/rm.md.  Every operation validates everything before changing anything: a failure
leaves the table as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import messages as m
from .errors import RmError, RmFailure
from .ranges import RangeMap

PAGE = 4096
ADDR_LIMIT = 1 << 44              # RMSRC vm_memory.h: addresses and sizes below 2^44
MAX_PARCELS_PER_OWNER = 64        # RMSRC memparcel.c MAX_MEMPARCEL_PER_VM
INVALID_HANDLE = 0xFFFF_FFFF
VALID_RIGHTS = (m.RIGHT_R, m.RIGHT_R | m.RIGHT_X, m.RIGHT_R | m.RIGHT_W,
                m.RIGHT_R | m.RIGHT_W | m.RIGHT_X)
RWX = m.RIGHT_R | m.RIGHT_W | m.RIGHT_X
ATTR_NORMAL, ATTR_DEVICE, ATTR_UNCACHED, ATTR_CACHED = 0, 1, 2, 3
TRANS_NAMES = {m.TRANS_DONATE: "donate", m.TRANS_LEND: "lend", m.TRANS_SHARE: "share"}


@dataclass
class Parcel:
    handle: int
    owner: int
    trans_type: int
    mem_type: int
    label: int
    acl: dict                       # vmid -> rights
    attrs: dict                     # vmid -> memory attribute
    ranges: list = field(default_factory=list)     # (address, size), in request order
    complete: bool = True           # False while MEM_APPEND entries are still expected
    sanitize: bool = False
    accepted: set = field(default_factory=set)     # borrowers that have it mapped

    @property
    def borrowers(self) -> list[int]:
        return [vmid for vmid in self.acl if vmid != self.owner]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.ranges)

    @property
    def kind(self) -> str:
        return TRANS_NAMES[self.trans_type]


class ParcelTable:
    def __init__(self, primary_vmid: int, vm_exists: Callable[[int], bool] = lambda v: False):
        self.primary = primary_vmid
        self.vm_exists = vm_exists             # which VMIDs other than the primary exist
        self.parcels: dict[int, Parcel] = {}
        self.pages = RangeMap()                # page range -> handle of the parcel holding it
        self.owners = RangeMap()               # page range -> owner, where not the primary VM
        self._next_handle = 0

    # --- queries ------------------------------------------------------------------------------
    def valid_vmid(self, vmid: int) -> bool:
        return vmid == self.primary or self.vm_exists(vmid)

    def owns(self, vmid: int, start: int, end: int) -> bool:
        if vmid == self.primary:
            return not self.owners.overlapping(start, end)
        return self.owners.covered(start, end, vmid)

    def lookup(self, handle: int) -> Parcel:
        parcel = self.parcels.get(handle)
        if parcel is None:
            raise RmFailure(RmError.HANDLE_INVALID, f"no parcel {handle:#x}")
        return parcel

    def for_borrower(self, vmid: int) -> list[Parcel]:
        return [p for p in self.parcels.values() if vmid in p.acl and vmid != p.owner]

    # --- checks -------------------------------------------------------------------------------
    def _check_sgl(self, owner: int, sgl) -> None:
        if not sgl:
            raise RmFailure(RmError.ARGUMENT_INVALID, "no memory entries")
        claimed = RangeMap()
        for ipa, size in sgl:
            if ipa % PAGE or size % PAGE or size == 0 or ipa >= ADDR_LIMIT or \
                    size >= ADDR_LIMIT or ipa + size > ADDR_LIMIT:
                raise RmFailure(RmError.ARGUMENT_INVALID, f"range {ipa:#x}+{size:#x}")
            end = ipa + size
            if claimed.overlapping(ipa, end):
                raise RmFailure(RmError.MEM_INVALID, f"range {ipa:#x}+{size:#x} repeated")
            taken = self.pages.overlapping(ipa, end)
            if taken:
                raise RmFailure(RmError.MEM_INVALID, f"{taken[0][0]:#x} is already in parcel "
                                f"{taken[0][2]:#x}")
            if not self.owns(owner, ipa, end):
                raise RmFailure(RmError.MEM_INVALID, f"range {ipa:#x}+{size:#x} is not VM "
                                f"{owner}'s")
            claimed.assign(ipa, end, True)

    def _check_acl(self, owner: int, trans: int, req: m.MemParcelRequest) -> dict:
        acl: dict[int, int] = {}
        for vmid, rights in req.acl:
            if vmid in acl:
                raise RmFailure(RmError.ARGUMENT_INVALID, f"VM {vmid} twice in the ACL")
            if not self.valid_vmid(vmid) or rights not in VALID_RIGHTS:
                raise RmFailure(RmError.ARGUMENT_INVALID, f"ACL entry {vmid}: {rights:#x}")
            if req.mem_type == m.MEM_TYPE_IO and rights & m.RIGHT_X:
                raise RmFailure(RmError.ARGUMENT_INVALID, "executable IO memory")
            if trans == m.TRANS_DONATE and rights != RWX:
                raise RmFailure(RmError.DENIED, "a donation must give full rights")
            acl[vmid] = rights
        if (trans == m.TRANS_SHARE) != (owner in acl):
            raise RmFailure(RmError.ARGUMENT_INVALID,
                            "the owner must be in a share's ACL and in no other's")
        return acl

    def _check_attrs(self, trans: int, req: m.MemParcelRequest, acl: dict) -> dict:
        attrs: dict[int, int] = {}
        for attr, vmid in req.attrs:
            if vmid in attrs or attr not in (ATTR_NORMAL, ATTR_DEVICE, ATTR_UNCACHED,
                                             ATTR_CACHED):
                raise RmFailure(RmError.ARGUMENT_INVALID, f"attribute {attr} for VM {vmid}")
            if (req.mem_type == m.MEM_TYPE_IO) != (attr == ATTR_DEVICE):
                raise RmFailure(RmError.ARGUMENT_INVALID, "device attribute iff IO memory")
            if trans == m.TRANS_DONATE and attr != ATTR_NORMAL:
                raise RmFailure(RmError.ARGUMENT_INVALID, "a donation keeps default attributes")
            if vmid not in acl:
                raise RmFailure(RmError.VMID_INVALID, f"attribute for VM {vmid} not in the ACL")
            attrs[vmid] = attr
        return attrs

    def _new_handle(self) -> int:
        handle = self._next_handle
        while handle in self.parcels or handle == INVALID_HANDLE:
            handle = (handle + 1) & 0xFFFF_FFFF
        self._next_handle = (handle + 1) & 0xFFFF_FFFF
        return handle

    # --- operations ---------------------------------------------------------------------------
    def create(self, owner: int, trans: int, req: m.MemParcelRequest) -> Parcel:
        if not self.valid_vmid(owner):
            raise RmFailure(RmError.VMID_INVALID, f"owner {owner}")
        if not req.acl or not req.sgl:
            raise RmFailure(RmError.ARGUMENT_INVALID, "empty ACL or memory list")
        if trans == m.TRANS_DONATE and len(req.acl) > 1:
            raise RmFailure(RmError.ARGUMENT_INVALID, "a donation has one recipient")
        if sum(p.owner == owner for p in self.parcels.values()) >= MAX_PARCELS_PER_OWNER:
            raise RmFailure(RmError.DENIED, f"VM {owner} has {MAX_PARCELS_PER_OWNER} parcels")
        if req.mem_type not in (m.MEM_TYPE_NORMAL, m.MEM_TYPE_IO):
            raise RmFailure(RmError.ARGUMENT_INVALID, f"memory type {req.mem_type}")
        sanitize = bool(req.flags & m.PARCEL_FLAG_SANITIZE)
        if sanitize and req.mem_type == m.MEM_TYPE_IO:
            raise RmFailure(RmError.ARGUMENT_INVALID, "sanitizing IO memory")
        acl = self._check_acl(owner, trans, req)
        attrs = self._check_attrs(trans, req, acl)
        self._check_sgl(owner, req.sgl)
        parcel = Parcel(self._new_handle(), owner, trans, req.mem_type, req.label, acl, attrs,
                        complete=not req.flags & m.PARCEL_FLAG_APPEND, sanitize=sanitize)
        self._add_ranges(parcel, req.sgl)
        self.parcels[parcel.handle] = parcel
        return parcel

    def _add_ranges(self, parcel: Parcel, sgl) -> None:
        for ipa, size in sgl:
            parcel.ranges.append((ipa, size))
            self.pages.assign(ipa, ipa + size, parcel.handle)

    def append(self, caller: int, handle: int, flags: int, sgl) -> Parcel:
        if not sgl:
            raise RmFailure(RmError.ARGUMENT_INVALID, "no memory entries")
        parcel = self.lookup(handle)
        if caller != parcel.owner:
            raise RmFailure(RmError.DENIED, f"VM {caller} does not own parcel {handle:#x}")
        if parcel.complete:
            raise RmFailure(RmError.DENIED, f"parcel {handle:#x} takes no more entries")
        self._check_sgl(caller, sgl)
        self._add_ranges(parcel, sgl)
        if flags & m.APPEND_FLAG_END:
            parcel.complete = True
        return parcel

    def reclaim(self, caller: int, handle: int, flags: int) -> Parcel:
        parcel = self.lookup(handle)
        if caller != parcel.owner:
            raise RmFailure(RmError.DENIED, f"VM {caller} does not own parcel {handle:#x}")
        if parcel.accepted:
            raise RmFailure(RmError.MEM_INUSE, f"parcel {handle:#x} is in use by VM(s) "
                            f"{sorted(parcel.accepted)}")
        if flags & m.RECLAIM_FLAG_SANITIZE and parcel.mem_type == m.MEM_TYPE_IO:
            raise RmFailure(RmError.ARGUMENT_INVALID, "sanitizing IO memory")
        self._remove(parcel)
        return parcel

    def _remove(self, parcel: Parcel) -> None:
        for ipa, size in parcel.ranges:
            self.pages.assign(ipa, ipa + size, None)
        del self.parcels[parcel.handle]

    def accept(self, vmid: int, handle: int) -> Parcel | None:
        """Borrower `vmid` maps a complete parcel.  A donation then changes hands: its pages
        become `vmid`'s and the parcel is gone (returns None then)."""
        parcel = self.lookup(handle)
        if vmid not in parcel.borrowers or not parcel.complete:
            raise RmFailure(RmError.DENIED, f"VM {vmid} cannot accept parcel {handle:#x}")
        if parcel.trans_type == m.TRANS_DONATE:
            self._remove(parcel)
            for ipa, size in parcel.ranges:
                self.owners.assign(ipa, ipa + size, None if vmid == self.primary else vmid)
            return None
        parcel.accepted.add(vmid)
        return parcel

    def release(self, vmid: int, handle: int) -> Parcel:
        parcel = self.lookup(handle)
        if vmid not in parcel.accepted:
            raise RmFailure(RmError.MEM_RELEASED, f"VM {vmid} has not accepted {handle:#x}")
        parcel.accepted.discard(vmid)
        return parcel

    def forget_vm(self, vmid: int, heir: int) -> None:
        """VM `vmid` is destroyed: its own parcels go away, it is done with everyone else's,
        and its pages go to `heir`."""
        for parcel in [p for p in self.parcels.values() if p.owner == vmid]:
            self._remove(parcel)
        for parcel in self.parcels.values():
            parcel.accepted.discard(vmid)
        for start, end, owner in list(self.owners):
            if owner == vmid:
                self.owners.assign(start, end, None if heir == self.primary else heir)

    # --- invariants (property tests) ----------------------------------------------------------
    def check_invariants(self) -> None:
        covered = 0
        for handle, p in self.parcels.items():
            assert p.handle == handle and handle != INVALID_HANDLE
            assert p.acl and p.ranges, f"parcel {handle} without ACL or memory"
            assert (p.trans_type == m.TRANS_SHARE) == (p.owner in p.acl)
            assert p.trans_type != m.TRANS_DONATE or len(p.acl) == 1
            assert p.accepted <= set(p.borrowers), f"parcel {handle} accepted by a stranger"
            assert p.complete or not p.accepted, f"incomplete parcel {handle} accepted"
            for ipa, size in p.ranges:
                assert self.pages.covered(ipa, ipa + size, handle), f"{ipa:#x} not in {handle}"
                assert self.owns(p.owner, ipa, ipa + size), f"{ipa:#x} is not VM {p.owner}'s"
                covered += size
        assert covered == sum(e - s for s, e, _ in self.pages), "a page is in two parcels"
        for s, e, handle in self.pages:
            assert handle in self.parcels, f"pages of a deleted parcel {handle}"
        counts: dict[int, int] = {}
        for p in self.parcels.values():
            counts[p.owner] = counts.get(p.owner, 0) + 1
        assert all(n <= MAX_PARCELS_PER_OWNER for n in counts.values())
        for _, _, owner in self.owners:
            assert owner != self.primary
