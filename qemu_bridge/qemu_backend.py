"""gunyah_el2's Backend on a QEMU machine: what the hypervisor's replies become in the mailbox.

Guest memory and asynchronous interrupts go through the transport; each EL2 action of a reply
(forward an SMC, start a CPU, raise an SPI, enter or leave a VM, write EL1/EL2 registers,
invalidate TLBs, kick a CPU) becomes shim commands (qemu_bridge/mailbox.py).
"""
from __future__ import annotations

import queue
import struct

from gunyah_el2.backend import CpuOn, ForwardSmc, RaiseSpi, Reply
from gunyah_el2.vm import (KICK_SPI_BASE, VTIMER_INTID, EnterVcpu, HCR_PRIMARY, InvalidateVmTlb,
                           Kick, PrepareKick, ReturnToIdle, WriteEl1)

from . import mailbox
from .mailbox import RawReply

GICD_IGROUPR = 0x080
GICD_ISENABLER = 0x100
GICD_ISPENDR = 0x200
GICD_IROUTER = 0x6000
GICR_WAKER = 0x14
GICR_SGI_FRAME = 0x1_0000


def msr(register: str) -> int:
    return mailbox.MSR_REGISTERS.index(register)


class QemuBackend:
    """gunyah_el2's Backend on a QEMU machine: memory and interrupts through the transport."""

    def __init__(self, transport, gicd_base: int, secondary_entry: int, gicr_base: int = 0):
        self.transport = transport
        self.gicd_base = gicd_base
        self.gicr_base = gicr_base
        self.secondary_entry = secondary_entry
        self.async_spis: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.primary_stage2 = (0, 0)        # (VTTBR, VTCR) of the primary VM; 0: stage 2 off

    def read_phys(self, addr: int, size: int) -> bytes:
        return self.transport.read_phys(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        self.transport.write_phys(addr, data)

    def raise_spi_async(self, spi: int) -> None:
        self.async_spis.put(("spi", spi))

    def kick_async(self, cpu: int) -> None:
        self.async_spis.put(("kick", cpu))

    def saved_el1(self, cpu: int) -> dict:
        """The EL1 state the shim saved into the CPU's context block on its IRQ exit."""
        n = len(mailbox.EL1_CONTEXT_REGS)
        raw = self.transport.read_phys(mailbox.mailbox_address(cpu) + mailbox.EL1_CONTEXT, 8 * n)
        block = dict(zip(mailbox.EL1_CONTEXT_REGS, struct.unpack(f"<{n}Q", raw)))
        return {reg: block[reg] for reg in mailbox.EL1_SAVED_REGS}

    def kick_writes(self, cpu: int) -> list[tuple[int, int]]:
        """32-bit GICD writes that route CPU `cpu`'s kick SPI to it, enable it, raise it."""
        intid = 32 + KICK_SPI_BASE + cpu
        router = self.gicd_base + GICD_IROUTER + 8 * intid
        return [(router, cpu), (router + 4, 0),          # Aff0 = cpu (CPUs 0..15 on virt)
                # Group 1 (delivered as IRQ).  No set/clear form exists for IGROUPR: the
                # whole word goes to group 1, as Linux puts every SPI anyway.
                (self.gicd_base + GICD_IGROUPR + 4 * (intid // 32), 0xFFFF_FFFF),
                (self.gicd_base + GICD_ISENABLER + 4 * (intid // 32), 1 << (intid % 32)),
                self.gicd_set_pending(KICK_SPI_BASE + cpu)]

    def async_writes(self) -> list[tuple[int, int]]:
        writes = []
        while not self.async_spis.empty():
            kind, n = self.async_spis.get()
            writes += self.kick_writes(n) if kind == "kick" else [self.gicd_set_pending(n)]
        return writes

    def gicd_set_pending(self, spi: int) -> tuple[int, int]:
        intid = 32 + spi
        return self.gicd_base + GICD_ISPENDR + 4 * (intid // 32), 1 << (intid % 32)

    def encode(self, reply: Reply, exit_) -> RawReply:
        x = list(reply.x)
        x += exit_.x[len(x):]                 # registers the hypervisor did not look at
        commands = []
        for action in reply.actions:
            if isinstance(action, ForwardSmc):
                commands.append((mailbox.OP_SMC, 0, 0))
            elif isinstance(action, CpuOn):
                target = (action.target_mpidr & 0xFF) + 16 * ((action.target_mpidr >> 8) & 0xFF)
                if target >= mailbox.MAX_CPUS:
                    x[0] = (-2) & 0xFFFF_FFFF_FFFF_FFFF       # PSCI INVALID_PARAMETERS
                    continue
                self.transport.write_boot_slot(target, action.entry, action.context)
                self.transport.write_phys(mailbox.mailbox_address(target) + mailbox.BOOT_VTTBR,
                                          struct.pack("<QQ", *self.primary_stage2))
                x[2], x[3] = self.secondary_entry, target
                commands.append((mailbox.OP_SMC, 0, 0))
            elif isinstance(action, RaiseSpi):
                addr, bit = self.gicd_set_pending(action.spi)
                commands.append((mailbox.OP_WRITE32, addr, bit))
            elif isinstance(action, EnterVcpu):
                block = struct.pack(f"<{len(mailbox.EL1_CONTEXT_REGS)}Q",
                                    *[action.context.get(r, 0) for r in mailbox.EL1_CONTEXT_REGS])
                self.transport.write_phys(mailbox.mailbox_address(exit_.cpu)
                                          + mailbox.EL1_CONTEXT, block)
                commands.append((mailbox.OP_LOAD_EL1, 0, 0))
            elif isinstance(action, ReturnToIdle):
                commands += [(mailbox.OP_MSR, msr("cntv_ctl_el0"), 0),     # the VM's timer off
                             (mailbox.OP_MSR, msr("ich_hcr_el2"), 0),
                             (mailbox.OP_MSR, msr("ich_lr0_el2"), 0),
                             (mailbox.OP_MSR, msr("hcr_el2"), HCR_PRIMARY),
                             (mailbox.OP_MSR, msr("vttbr_el2"), 0),
                             (mailbox.OP_IDLE, 0, 0)]
            elif isinstance(action, WriteEl1):
                commands += [(mailbox.OP_MSR, mailbox.MSR_REGISTERS.index(reg), value)
                             for reg, value in action.values.items()]
            elif isinstance(action, InvalidateVmTlb):
                commands.append((mailbox.OP_TLBI_VM, 0, 0))
            elif isinstance(action, Kick):
                commands += [(mailbox.OP_WRITE32, a, v) for a, v in self.kick_writes(action.cpu)]
            elif isinstance(action, PrepareKick):
                frame = self.gicr_base + 0x20000 * exit_.cpu
                commands += [(mailbox.OP_WRITE32, frame + GICR_WAKER, 0),
                             # SGIs/PPIs in group 1; the VM's virtual timer PPI enabled
                             (mailbox.OP_WRITE32, frame + GICR_SGI_FRAME + GICD_IGROUPR,
                              0xFFFF_FFFF),
                             (mailbox.OP_WRITE32, frame + GICR_SGI_FRAME + GICD_ISENABLER,
                              1 << VTIMER_INTID),
                             (mailbox.OP_MSR, msr("icc_pmr_el1"), 0xFF),
                             (mailbox.OP_MSR, msr("icc_igrpen1_el1"), 1)]
            else:
                raise TypeError(f"no mailbox encoding for {action!r}")
        spsr = exit_.spsr if reply.spsr is None else reply.spsr
        return RawReply(x=x, elr=reply.pc, spsr=spsr, commands=commands)
