"""The EL2 shim's mailbox: the one shared-memory protocol between the shim and Python.

Modelled on KVM's shared ``kvm_run`` page.  Each physical CPU has one 4 KiB page.  On a trap
the shim (the small privileged part) writes an *exit record* into its page, bumps
``seq_req`` and spins until Python (the part that decides) has written a *reply* and set
``seq_ack`` to the same value.  The shim then runs the reply's commands in order (for example
"issue this SMC to firmware" or "write this GIC register"), loads x0..x7 and ELR_EL2 from
the reply and returns to the guest with ``eret``.

This module is the single source of truth for the layout: ``guest/build.py`` turns
:func:`assembler_constants` into the ``mailbox.inc`` that the shim's assembly includes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gunyah_el2.backend import VcpuExit

# Physical memory map of the bottom of guest RAM (QEMU virt: RAM starts at 0x4000_0000).
RAM_BASE = 0x4000_0000
# QEMU puts its own 4 KiB boot stub at RAM_BASE and loads an arm64 Image whose text_offset is
# below that stub's size 2 MiB higher, so the shim (text_offset 0) runs at RAM_BASE + 2 MiB.
SHIM_BASE = RAM_BASE + 0x20_0000
MAILBOX_BASE = SHIM_BASE + 0x1_0000      # one page per physical CPU
PAYLOAD_PARAMS = SHIM_BASE + 0x3_0000    # parameter block for bare-metal test payloads
PARAMS_MAGIC = 0x4D52_4150_4D49_5347     # "GSIMPARM" read as a little-endian u64
MAILBOX_SIZE = 0x1000
MAX_CPUS = 8
# Everything from RAM_BASE up to here is hidden from the guest (DT reserved-memory, no-map).
RESERVED_END = RAM_BASE + 0x40_0000
# Where the guest's kernel (or a bare-metal payload) is loaded: first 2 MiB boundary after.
GUEST_LOAD_ADDR = RESERVED_END

# --- exit record (shim -> Python) -----------------------------------------------------------
SEQ_REQ = 0x000
SEQ_ACK = 0x008          # written by Python last: "the reply is ready"
KIND = 0x010
ESR = 0x018
ELR = 0x020
SPSR = 0x028
FAR = 0x030
HPFAR = 0x038
X0 = 0x040               # x0..x30, 8 bytes each (to 0x138)
NGPRS = 31
TTBR0_EL1 = 0x140
TTBR1_EL1 = 0x148
TCR_EL1 = 0x150
SCTLR_EL1 = 0x158
MPIDR = 0x160
VBAR_EL1 = 0x168
IRQ_INTID = 0x170        # KIND_IRQ: the INTID the shim acknowledged (and ended)
# --- reply (Python -> shim) -----------------------------------------------------------------
R_X0 = 0x200             # x0..x30 loaded into the guest before eret (to 0x2F8)
R_ELR = 0x2F8
R_SPSR = 0x300
NCMDS = 0x308
CMDS = 0x310             # array of (op, a, b), 24 bytes each
CMD_SIZE = 24
MAX_CMDS = 16
# --- boot slot (Python -> shim, before the CPU enters the guest) ----------------------------
BOOT_ENTRY = 0x500
BOOT_CONTEXT = 0x508
BOOT_RESERVED_MASK = 0x510   # CPU 0 only: CPUs the shim starts, parked, for the hypervisor
BOOT_VTTBR = 0x518           # non-zero: the primary VM runs under this stage-2 table ...
BOOT_VTCR = 0x520            # ... with this VTCR_EL2 (set when VMs can run: isolation)
BOOT_GICR_FRAME = 0x528      # reserved CPUs: their GIC redistributor, woken at start
# --- EL1 context block: what OP_LOAD_EL1 loads when a CPU switches to a VM's vCPU -----------
EL1_CONTEXT = 0x600
EL1_CONTEXT_REGS = ("sctlr_el1", "ttbr0_el1", "ttbr1_el1", "tcr_el1", "mair_el1", "amair_el1",
                    "vbar_el1", "cpacr_el1", "contextidr_el1", "tpidr_el1", "tpidr_el0",
                    "tpidrro_el0", "sp_el0", "sp_el1", "elr_el1", "spsr_el1", "cntkctl_el1",
                    "cntv_cval_el0", "cntv_ctl_el0", "vmpidr_el2", "hcr_el2", "vttbr_el2",
                    "vtcr_el2", "ich_elrsr_el2")      # the last one is only saved (read-only)
# The part of it the shim saves on an IRQ exit (the vCPU's own state, not the VM's EL2 set-up).
EL1_SAVED_REGS = EL1_CONTEXT_REGS[:19] + ("ich_elrsr_el2",)

# Exit kinds.
KIND_SYNC = 1            # synchronous exception from EL1 (HVC, trapped SMC, stage-2 fault...)
KIND_UNEXPECTED = 2      # any other vector: fatal; the record's x0 holds the vector offset
KIND_IDLE = 3            # a hypervisor-reserved CPU waits for work (a vCPU to run)
KIND_IRQ = 4             # a physical interrupt taken to EL2 while a VM ran (a kick)

# Reply commands, run by the shim in order before it returns to the guest.
OP_SMC = 1       # load x0..x7 from the reply, issue SMC #0 at EL2, store x0..x3 back in it
OP_WRITE32 = 2   # 32-bit store of b to physical address a (e.g. GICD_ISPENDR)
OP_WRITE64 = 3   # 64-bit store of b to physical address a
OP_MSR = 4       # write b to the system register numbered a in MSR_REGISTERS
OP_LOAD_EL1 = 5  # load the EL1 context block (and the VM's HCR/VTTBR/VTCR) into the CPU
OP_TLBI_VM = 6   # invalidate the stage-1+2 TLB entries of the current VMID, all CPUs
OP_IDLE = 7      # after the commands, do not return: record an IDLE exit and wait again

# Registers the shim has an ``msr`` gadget for, in gadget-table order.
MSR_REGISTERS = ("hcr_el2", "vttbr_el2", "vtcr_el2", "cnthctl_el2", "esr_el1", "far_el1",
                 "elr_el1", "spsr_el1", "icc_pmr_el1", "icc_igrpen1_el1", "ich_hcr_el2",
                 "ich_vmcr_el2", "ich_lr0_el2", "ich_lr1_el2", "cntv_ctl_el0", "ich_lr2_el2",
                 "ich_lr3_el2")

_LAYOUT_NAMES = (
    "RAM_BASE SHIM_BASE MAILBOX_BASE PAYLOAD_PARAMS MAILBOX_SIZE MAX_CPUS RESERVED_END GUEST_LOAD_ADDR "
    "SEQ_REQ SEQ_ACK KIND ESR ELR SPSR FAR HPFAR X0 TTBR0_EL1 TTBR1_EL1 TCR_EL1 SCTLR_EL1 MPIDR "
    "VBAR_EL1 R_X0 R_ELR R_SPSR NCMDS CMDS CMD_SIZE MAX_CMDS BOOT_ENTRY BOOT_CONTEXT "
    "BOOT_RESERVED_MASK BOOT_VTTBR BOOT_VTCR BOOT_GICR_FRAME EL1_CONTEXT KIND_SYNC KIND_UNEXPECTED KIND_IDLE KIND_IRQ "
    "OP_SMC OP_WRITE32 OP_WRITE64 OP_MSR OP_LOAD_EL1 OP_TLBI_VM OP_IDLE IRQ_INTID"
).split()


def assembler_constants() -> str:
    """The layout as GNU assembler ``.equ`` lines (prefixed ``MB_``) for the shim."""
    lines = ["/* Generated from qemu_bridge/mailbox.py by guest/build.py: do not edit. */"]
    for name in _LAYOUT_NAMES:
        lines.append(f".equ MB_{name}, {globals()[name]:#x}")
    for index, reg in enumerate(MSR_REGISTERS):
        lines.append(f".equ MSR_{reg.upper()}, {index}")
    lines.append(f".equ MSR_COUNT, {len(MSR_REGISTERS)}")
    for index, reg in enumerate(EL1_CONTEXT_REGS):
        lines.append(f".equ CTX_{reg}, {EL1_CONTEXT + 8 * index:#x}")
    return "\n".join(lines) + "\n"


def payload_params(abi: str, ncpus: int, gicd: int, gicr: int, uart: int) -> bytes:
    """The block bare-metal payloads read at PAYLOAD_PARAMS (guest/payloads/lib.h)."""
    return struct.pack("<6Q", PARAMS_MAGIC, int(abi.lstrip("v")), ncpus, gicd, gicr, uart)


def mailbox_address(cpu: int) -> int:
    if not 0 <= cpu < MAX_CPUS:
        raise ValueError(f"cpu {cpu} outside 0..{MAX_CPUS - 1}")
    return MAILBOX_BASE + cpu * MAILBOX_SIZE


_RECORD = struct.Struct("<8Q31Q8x7Q")   # SEQ_REQ..HPFAR, x0..x30, (pad at 0x138), TTBR0..IRQ_INTID


def decode_exit(cpu: int, buf, offset: int = 0) -> tuple[int, int, VcpuExit]:
    """(seq, kind, exit) from an exit record at `offset` of `buf` (bytes or the mapped RAM)."""
    v = _RECORD.unpack_from(buf, offset)
    return v[0], v[2], VcpuExit(cpu, v[3], v[4], v[5], v[8:39], v[6], v[7], v[39], v[40],
                                v[41], v[42], v[43], v[44], v[45])


RECORD_BYTES = _RECORD.size
_PLAIN_REPLY = struct.Struct("<31QQQQ")       # x0..x30, ELR, SPSR, ncmds = 0


@dataclass
class RawReply:
    """What the shim applies: commands first, then x0..x30, ELR_EL2 and SPSR_EL2, then eret."""
    x: list[int]
    elr: int
    spsr: int
    commands: list[tuple[int, int, int]] = field(default_factory=list)

    def encode(self) -> bytes:
        """Bytes for offsets R_X0 .. end of the commands (SEQ_ACK is written separately)."""
        regs = [v & 0xFFFF_FFFF_FFFF_FFFF for v in self.x]
        if not self.commands:                   # the common case, kept cheap
            return _PLAIN_REPLY.pack(*regs, self.elr, self.spsr, 0)
        if len(self.commands) > MAX_CMDS:
            raise ValueError(f"{len(self.commands)} reply commands, the shim takes {MAX_CMDS}")
        buf = bytearray(CMDS - R_X0 + CMD_SIZE * len(self.commands))
        _PLAIN_REPLY.pack_into(buf, 0, *regs, self.elr, self.spsr, len(self.commands))
        for i, (op, a, b) in enumerate(self.commands):
            struct.pack_into("<QQQ", buf, CMDS - R_X0 + CMD_SIZE * i, op, a,
                             b & 0xFFFF_FFFF_FFFF_FFFF)
        return bytes(buf)
