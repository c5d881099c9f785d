"""Reads through a guest's EL1 stage-1 translation, for pointers passed to hypercalls.

Gunyah's hypercalls take buffers as virtual addresses of the caller (Linux passes kernel VAs),
so the hypervisor walks the caller's page tables, as the hardware would for an EL1 access.
Supported: the 4 KiB granule with 48-bit or smaller VAs (what arm64 Linux and our payloads use),
and the MMU switched off (VA = PA).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import GunyahError, HypercallFailed

PAGE = 4096
_OA_MASK = 0x0000_FFFF_FFFF_F000


@dataclass(frozen=True)
class Stage1:
    ttbr0: int
    ttbr1: int
    tcr: int
    sctlr: int

    @property
    def enabled(self) -> bool:
        return bool(self.sctlr & 1)


class TranslationFault(HypercallFailed):
    def __init__(self, va: int, why: str):
        super().__init__(GunyahError.ADDR_INVAL, f"VA {va:#x}: {why}")
        self.va = va


def translate(regime: Stage1, va: int, read_phys: Callable[[int, int], bytes]) -> int:
    """The physical address of `va`, or TranslationFault."""
    if not regime.enabled:
        return va
    upper = (va >> 63) & 1
    tcr = regime.tcr
    if upper:
        tsz, granule, disabled = (tcr >> 16) & 0x3F, (tcr >> 30) & 3, (tcr >> 23) & 1
        ttbr, granule_ok = regime.ttbr1, granule == 0b10
    else:
        tsz, granule, disabled = tcr & 0x3F, (tcr >> 14) & 3, (tcr >> 7) & 1
        ttbr, granule_ok = regime.ttbr0, granule == 0b00
    va_bits = 64 - tsz
    if disabled:
        raise TranslationFault(va, "walks disabled for this half (EPD)")
    if not granule_ok:
        raise TranslationFault(va, "only the 4 KiB granule is supported")
    top = va >> va_bits
    if top != ((1 << (64 - va_bits)) - 1 if upper else 0):
        raise TranslationFault(va, f"outside the {va_bits}-bit range")
    level = 4 - (va_bits - 12 + 8) // 9          # 48 bits -> level 0, 39 -> 1, ...
    table = ttbr & 0x0000_FFFF_FFFF_FFFE
    while True:
        shift = 12 + 9 * (3 - level)
        index = (va >> shift) & 0x1FF
        desc = int.from_bytes(read_phys(table + 8 * index, 8), "little")
        if not desc & 1:
            raise TranslationFault(va, f"invalid descriptor at level {level}")
        is_table = bool(desc & 2)
        if level == 3:
            if not is_table:
                raise TranslationFault(va, "reserved level-3 descriptor")
            return (desc & _OA_MASK) | (va & (PAGE - 1))
        if is_table:
            table = desc & _OA_MASK
            level += 1
            continue
        if level == 0:
            raise TranslationFault(va, "block descriptor at level 0")
        block = 1 << shift
        return (desc & _OA_MASK & ~(block - 1)) | (va & (block - 1))


def read_virt(regime: Stage1, va: int, size: int, read_phys) -> bytes:
    out = bytearray()
    while size > 0:
        n = min(size, PAGE - (va & (PAGE - 1)))
        out += read_phys(translate(regime, va, read_phys), n)
        va, size = va + n, size - n
    return bytes(out)


def write_virt(regime: Stage1, va: int, data: bytes, read_phys, write_phys) -> None:
    # Translate every page before writing any, so a fault writes nothing.
    chunks, pos = [], 0
    while pos < len(data):
        n = min(len(data) - pos, PAGE - ((va + pos) & (PAGE - 1)))
        chunks.append((translate(regime, va + pos, read_phys), data[pos:pos + n]))
        pos += n
    for pa, chunk in chunks:
        write_phys(pa, chunk)
