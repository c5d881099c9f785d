"""Stage-2 translation tables: the address space of one VM, as the hardware walks it.

The hypervisor builds them in memory that only it owns (the DT hides it from the primary VM)
and writes them through the backend, so QEMU's MMU walks exactly what this module wrote.
Layout: 4 KiB granule, 39-bit IPA space, walks start at level 1 (one table page).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PAGE = 4096
IPA_BITS = 39
LEVEL_SHIFT = {1: 30, 2: 21, 3: 12}

# VTCR_EL2: T0SZ=25 (39-bit IPA), SL0=1 (start at level 1), inner/outer write-back, inner
# shareable, 4 KiB granule, PS=40-bit, RES1 bit 31.
VTCR = (64 - IPA_BITS) | (1 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (0 << 14) | (2 << 16) \
    | (1 << 31)

# Descriptor bits (stage 2).
VALID = 1 << 0
TABLE = 1 << 1          # at levels 1-2: next-level table; at level 3: page
MEMATTR_NORMAL_WB = 0xF << 2
MEMATTR_DEVICE = 0x0 << 2
S2AP_R = 1 << 6
S2AP_W = 1 << 7
SH_INNER = 3 << 8
AF = 1 << 10
XN = 1 << 54
OA_MASK = 0x0000_FFFF_FFFF_F000


@dataclass(frozen=True)
class Perms:
    read: bool = True
    write: bool = True
    execute: bool = True

    def bits(self) -> int:
        return (S2AP_R if self.read else 0) | (S2AP_W if self.write else 0) | \
            (0 if self.execute else XN)


RWX = Perms()


class PageAllocator:
    """Hands out zeroed 4 KiB pages from the hypervisor's private memory."""

    def __init__(self, base: int, size: int, write_phys: Callable[[int, bytes], None]):
        self.base, self.end, self.next = base, base + size, base
        self.free: list[int] = []
        self.write_phys = write_phys

    def alloc(self) -> int:
        if self.free:
            page = self.free.pop()
        else:
            if self.next + PAGE > self.end:
                raise MemoryError("hypervisor memory for stage-2 tables is exhausted")
            page, self.next = self.next, self.next + PAGE
        self.write_phys(page, bytes(PAGE))
        return page

    def release(self, page: int) -> None:
        self.free.append(page)


class Stage2:
    def __init__(self, vmid: int, pages: PageAllocator,
                 read_phys: Callable[[int, int], bytes],
                 write_phys: Callable[[int, bytes], None]):
        self.vmid = vmid
        self.pages = pages
        self.read_phys, self.write_phys = read_phys, write_phys
        self.root = pages.alloc()
        self.tables = [self.root]

    @property
    def vttbr(self) -> int:
        return (self.vmid << 48) | self.root

    def _entry(self, table: int, index: int) -> int:
        return int.from_bytes(self.read_phys(table + 8 * index, 8), "little")

    def _set(self, table: int, index: int, value: int) -> None:
        self.write_phys(table + 8 * index, value.to_bytes(8, "little"))

    def _next_table(self, table: int, index: int, level: int) -> int:
        """The level+1 table under entry `index`, creating it (splitting a block) if needed."""
        desc = self._entry(table, index)
        if desc & VALID and desc & TABLE:
            return desc & OA_MASK
        child = self.pages.alloc()
        self.tables.append(child)
        if desc & VALID:                          # a block: keep its mappings, one level down
            size = 1 << LEVEL_SHIFT[level + 1]
            kind = VALID | (TABLE if level + 1 == 3 else 0)
            attrs = desc & ~OA_MASK & ~(VALID | TABLE)
            for i in range(512):
                self._set(child, i, ((desc & OA_MASK) + i * size) | attrs | kind)
        self._set(table, index, child | VALID | TABLE)
        return child

    def map(self, ipa: int, pa: int, size: int, perms: Perms = RWX, device: bool = False) -> None:
        """Map [ipa, ipa+size) to [pa, ...): 1 GiB / 2 MiB blocks where aligned, else pages."""
        if ipa % PAGE or pa % PAGE or size % PAGE:
            raise ValueError("stage-2 mappings are page aligned")
        if ipa + size > 1 << IPA_BITS:
            raise ValueError(f"IPA {ipa + size:#x} is beyond the {IPA_BITS}-bit IPA space")
        attrs = (MEMATTR_DEVICE | XN if device else MEMATTR_NORMAL_WB) | SH_INNER | AF | \
            perms.bits()
        while size:
            for level in (1, 2, 3):
                block = 1 << LEVEL_SHIFT[level]
                if level == 3 or (ipa % block == 0 and pa % block == 0 and size >= block):
                    break
            table, lvl = self.root, 1
            while lvl < level:
                table = self._next_table(table, (ipa >> LEVEL_SHIFT[lvl]) & 0x1FF, lvl)
                lvl += 1
            kind = VALID | (TABLE if level == 3 else 0)
            self._set(table, (ipa >> LEVEL_SHIFT[level]) & 0x1FF, pa | attrs | kind)
            ipa, pa, size = ipa + block, pa + block, size - block

    def unmap(self, ipa: int, size: int) -> None:
        """Remove [ipa, ipa+size) (splitting blocks as needed); the caller invalidates TLBs."""
        while size:
            table, level = self.root, 1
            while True:
                shift = LEVEL_SHIFT[level]
                index = (ipa >> shift) & 0x1FF
                desc = self._entry(table, index)
                block = 1 << shift
                if not desc & VALID:
                    step = block - (ipa % block)
                    break
                if level == 3 or (not desc & TABLE and ipa % block == 0 and size >= block):
                    self._set(table, index, 0)
                    step = block
                    break
                table = self._next_table(table, index, level)   # partial block: split it
                level += 1
            step = min(step, size)
            ipa, size = ipa + step, size - step

    def translate(self, ipa: int) -> int | None:
        """The PA the hardware would reach for `ipa`, or None (a stage-2 fault)."""
        table, level = self.root, 1
        while True:
            shift = LEVEL_SHIFT[level]
            desc = self._entry(table, (ipa >> shift) & 0x1FF)
            if not desc & VALID:
                return None
            if level == 3 or not desc & TABLE:
                return (desc & OA_MASK & ~((1 << shift) - 1)) | (ipa & ((1 << shift) - 1))
            table, level = desc & OA_MASK, level + 1
