"""A VM's virtual GICv3: distributor and redistributors emulated from stage-2 faults.

The VM's CPU interface is the hardware's virtual one (ICV_* registers, list registers); only
the memory-mapped parts are modelled here, as a register file with the few behaviours Linux's
GICv3 driver relies on (identification, RWP/sleep handshakes, set/clear register pairs,
per-vCPU redistributor frames).  Which interrupts a vCPU has enabled decides what the
hypervisor injects.  No LPIs, no ITS, SPIs 32..63.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GICD_BASE, GICD_SIZE = 0x0800_0000, 0x1_0000
GICR_BASE, GICR_STRIDE = 0x080A_0000, 0x2_0000
SGI_FRAME = 0x1_0000

PIDR2_GICV3 = 0x3B             # ArchRev 3
IIDR_ARM = 0x0000_043B
TYPER_LINES = 1                # ITLinesNumber: INTIDs up to 32 * (1 + 1) - 1 = 63
TYPER_IDBITS = 9               # 10 bits of INTID

# Register pairs whose writes set or clear bits of one state (offset -> (state, set?)).
_DIST_PAIRS = {0x100: ("enable", True), 0x180: ("enable", False),
               0x200: ("pending", True), 0x280: ("pending", False),
               0x300: ("active", True), 0x380: ("active", False)}


@dataclass
class Redistributor:
    index: int
    last: bool
    sleeping: bool = True
    regs: dict = field(default_factory=dict)       # plain read/write registers
    enable: int = 0                                # SGIs and PPIs (INTIDs 0..31)
    pending: int = 0
    active: int = 0


class VGic:
    def __init__(self, nvcpus: int):
        self.ctlr = 0
        self.regs: dict[int, int] = {}
        self.spi = {"enable": 0, "pending": 0, "active": 0}      # bit n = INTID n
        self.redists = [Redistributor(i, i == nvcpus - 1) for i in range(nvcpus)]

    @staticmethod
    def owns(ipa: int, nvcpus: int) -> bool:
        return GICD_BASE <= ipa < GICD_BASE + GICD_SIZE or \
            GICR_BASE <= ipa < GICR_BASE + GICR_STRIDE * nvcpus

    def ppi_enabled(self, vcpu: int, intid: int) -> bool:
        return bool(self.redists[vcpu].enable >> intid & 1)

    # --- accesses -------------------------------------------------------------------------------
    def read(self, ipa: int, size: int) -> int:
        if size == 8:                              # 64-bit registers: two 32-bit halves
            return self.read(ipa, 4) | (self.read(ipa + 4, 4) << 32)
        if ipa < GICD_BASE + GICD_SIZE:
            value = self._dist_read(ipa - GICD_BASE)
        else:
            frame, off = divmod(ipa - GICR_BASE, GICR_STRIDE)
            value = self._redist_read(self.redists[frame], off)
        return value & ((1 << (8 * size)) - 1)

    def write(self, ipa: int, size: int, value: int) -> None:
        if ipa < GICD_BASE + GICD_SIZE:
            self._dist_write(ipa - GICD_BASE, size, value)
        else:
            frame, off = divmod(ipa - GICR_BASE, GICR_STRIDE)
            self._redist_write(self.redists[frame], off, size, value)

    # --- distributor ----------------------------------------------------------------------------
    def _dist_read(self, off: int) -> int:
        if off == 0x0000:
            return self.ctlr                       # RWP (bit 31) always reads 0: done
        if off == 0x0004:
            return (TYPER_IDBITS << 19) | TYPER_LINES
        if off == 0x0008:
            return IIDR_ARM
        if off == 0xFFE8:
            return PIDR2_GICV3
        base = off & ~0x7F
        if base in _DIST_PAIRS and off < base + 8:
            state, _ = _DIST_PAIRS[base]
            return (self.spi[state] >> (32 * ((off - base) // 4))) & 0xFFFF_FFFF
        return self.regs.get(off & ~3, 0) >> (8 * (off & 3))

    def _dist_write(self, off: int, size: int, value: int) -> None:
        if off == 0x0000:
            self.ctlr = value & 0x13                # EnableGrp0, EnableGrp1, ARE
            return
        base = off & ~0x7F
        if base in _DIST_PAIRS and off < base + 8:
            state, setting = _DIST_PAIRS[base]
            bits = (value & 0xFFFF_FFFF) << (32 * ((off - base) // 4))
            bits &= ~0xFFFF_FFFF                    # INTIDs 0..31 live in the redistributors
            self.spi[state] = self.spi[state] | bits if setting else self.spi[state] & ~bits
            return
        for i in range(size // 4 or 1):            # plain registers: IGROUPR, IPRIORITYR, ...
            self.regs[(off & ~3) + 4 * i] = (value >> (32 * i)) & 0xFFFF_FFFF

    # --- redistributors ---------------------------------------------------------------------------
    def _redist_read(self, rd: Redistributor, off: int) -> int:
        if off == 0x0008:                          # GICR_TYPER (64 bits)
            return (rd.index << 32) | (rd.index << 8) | (0x10 if rd.last else 0)
        if off == 0x000C:
            return rd.index                         # upper half: Aff0
        if off == 0x0004:
            return IIDR_ARM
        if off == 0x0014:                          # GICR_WAKER: ChildrenAsleep follows
            return (0b110 if rd.sleeping else 0)   # ProcessorSleep at once
        if off == 0xFFE8:
            return PIDR2_GICV3
        if off in (SGI_FRAME + 0x100, SGI_FRAME + 0x180):
            return rd.enable
        if off in (SGI_FRAME + 0x200, SGI_FRAME + 0x280):
            return rd.pending
        if off in (SGI_FRAME + 0x300, SGI_FRAME + 0x380):
            return rd.active
        return rd.regs.get(off & ~3, 0) >> (8 * (off & 3))

    def _redist_write(self, rd: Redistributor, off: int, size: int, value: int) -> None:
        value &= 0xFFFF_FFFF
        if off == 0x0014:
            rd.sleeping = bool(value & 0b10)
        elif off == SGI_FRAME + 0x100:
            rd.enable |= value
        elif off == SGI_FRAME + 0x180:
            rd.enable &= ~value
        elif off == SGI_FRAME + 0x200:
            rd.pending |= value
        elif off == SGI_FRAME + 0x280:
            rd.pending &= ~value
        elif off == SGI_FRAME + 0x300:
            rd.active |= value
        elif off == SGI_FRAME + 0x380:
            rd.active &= ~value
        else:
            rd.regs[off & ~3] = value
