"""The narrow interface between the hypervisor's policy and whatever runs the vCPUs.

Exit records come in (:class:`VcpuExit`), replies go out (:class:`Reply`: registers, the
return address and EL2 actions).  The hypervisor also reads and writes guest physical memory
and raises interrupts through a :class:`Backend`.  ``qemu_bridge`` implements it on QEMU;
:class:`FakeBackend` implements it in memory so that pytest runs the same handlers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# ESR_EL2 exception classes the hypervisor handles.
EC_HVC64 = 0x16
EC_SMC64 = 0x17

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_CONDUITS = {EC_HVC64: "hvc", EC_SMC64: "smc"}


@dataclass(slots=True)          # built once per trap: a plain slotted class is the cheapest
class VcpuExit:
    """One trap of a vCPU to EL2, as the shim recorded it."""
    cpu: int                 # physical CPU index (mailbox number)
    esr: int
    elr: int
    spsr: int
    x: tuple[int, ...]       # x0..x30 at the time of the trap (tests may give fewer)
    far: int = 0
    hpfar: int = 0
    ttbr0: int = 0           # the EL1 translation regime, to read through guest pointers
    ttbr1: int = 0
    tcr: int = 0
    sctlr: int = 0
    mpidr: int = 0
    vbar: int = 0            # VBAR_EL1: where an injected abort goes
    intid: int = 1023        # IRQ exits: the physical INTID the shim acknowledged
    el1: dict | None = None  # IRQ exits of a vCPU: its EL1 state (for switching it out)

    @property
    def ec(self) -> int:
        return (self.esr >> 26) & 0x3F

    @property
    def conduit(self) -> str:
        ec = (self.esr >> 26) & 0x3F
        return _CONDUITS.get(ec) or f"ec{ec:#x}"

    @property
    def next_pc(self) -> int:
        """Where the guest resumes: HVC reports the next instruction, a trapped SMC itself."""
        return self.elr + 4 if self.ec == EC_SMC64 else self.elr


# --- EL2 actions carried out before the vCPU resumes -----------------------------------------
@dataclass(frozen=True)
class ForwardSmc:
    """Issue SMC #0 at EL2 with the reply's x0..x7 and hand its x0..x3 to the guest."""


@dataclass(frozen=True)
class CpuOn:
    """PSCI CPU_ON on behalf of the guest: start `target_mpidr` at EL1 at `entry`, x0=context."""
    target_mpidr: int
    entry: int
    context: int


@dataclass(frozen=True)
class RaiseSpi:
    """Make SPI `spi` (0-based SPI number, INTID = 32 + spi) pending in the GIC distributor."""
    spi: int


@dataclass(slots=True)
class Reply:
    x: list[int]
    pc: int
    actions: list[object] = field(default_factory=list)
    spsr: int | None = None          # None: resume with the trapped PSTATE


class Backend(Protocol):
    def read_phys(self, addr: int, size: int) -> bytes: ...
    def write_phys(self, addr: int, data: bytes) -> None: ...
    def raise_spi_async(self, spi: int) -> None:
        """Raise an SPI while no call of the target CPU is in flight."""
    def kick_async(self, cpu: int) -> None:
        """Make the vCPU running on `cpu` trap to EL2 (see gunyah_el2.vm.Kick)."""


class FakeBackend:
    """Guest physical memory as a sparse page dictionary; records asynchronous interrupts."""

    PAGE = 4096

    def __init__(self, ram_base: int = 0x4000_0000, ram_size: int = 512 << 20):
        self.ram_base, self.ram_size = ram_base, ram_size
        self.pages: dict[int, bytearray] = {}
        self.async_spis: list[int] = []
        self.async_kicks: list[int] = []

    def _check(self, addr: int, size: int) -> None:
        if addr < self.ram_base or addr + size > self.ram_base + self.ram_size:
            raise ValueError(f"physical address {addr:#x}+{size:#x} is outside RAM")

    def read_phys(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        out = bytearray()
        while size:
            page, off = divmod(addr, self.PAGE)
            n = min(size, self.PAGE - off)
            out += self.pages.get(page, bytes(self.PAGE))[off:off + n]
            addr, size = addr + n, size - n
        return bytes(out)

    def write_phys(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        pos = 0
        while pos < len(data):
            page, off = divmod(addr + pos, self.PAGE)
            n = min(len(data) - pos, self.PAGE - off)
            self.pages.setdefault(page, bytearray(self.PAGE))[off:off + n] = data[pos:pos + n]
            pos += n

    def raise_spi_async(self, spi: int) -> None:
        self.async_spis.append(spi)

    def kick_async(self, cpu: int) -> None:
        self.async_kicks.append(cpu)
