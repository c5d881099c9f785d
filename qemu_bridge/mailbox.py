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
STACK_BASE = SHIM_BASE + 0x2_0000        # one page of EL2 stack per physical CPU
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
X0 = 0x040               # x0..x7, 8 bytes each
TTBR0_EL1 = 0x080
TTBR1_EL1 = 0x088
TCR_EL1 = 0x090
SCTLR_EL1 = 0x098
MPIDR = 0x0A0
# --- reply (Python -> shim) -----------------------------------------------------------------
R_X0 = 0x100             # x0..x7 loaded into the guest before eret
R_ELR = 0x140
NCMDS = 0x150
CMDS = 0x160             # array of (op, a, b), 24 bytes each
CMD_SIZE = 24
MAX_CMDS = 16
# --- boot slot (Python -> shim, before the CPU enters the guest) ----------------------------
BOOT_ENTRY = 0x300
BOOT_CONTEXT = 0x308

# Exit kinds.
KIND_SYNC = 1            # synchronous exception from EL1 (HVC, trapped SMC, ...)
KIND_UNEXPECTED = 2      # any other vector: fatal; the record's x0 holds the vector offset

# Reply commands, run by the shim in order before it returns to the guest.
OP_SMC = 1       # load x0..x7 from the reply, issue SMC #0 at EL2, store x0..x3 back in it
OP_WRITE32 = 2   # 32-bit store of b to physical address a (e.g. GICD_ISPENDR)
OP_WRITE64 = 3   # 64-bit store of b to physical address a
OP_MSR = 4       # write b to the EL2 system register numbered a in MSR_REGISTERS

# Registers the shim has an ``msr`` gadget for, in gadget-table order.
MSR_REGISTERS = ("hcr_el2", "vttbr_el2", "vtcr_el2", "cnthctl_el2")

_LAYOUT_NAMES = (
    "RAM_BASE SHIM_BASE MAILBOX_BASE STACK_BASE PAYLOAD_PARAMS MAILBOX_SIZE MAX_CPUS RESERVED_END GUEST_LOAD_ADDR "
    "SEQ_REQ SEQ_ACK KIND ESR ELR SPSR FAR HPFAR X0 TTBR0_EL1 TTBR1_EL1 TCR_EL1 SCTLR_EL1 MPIDR "
    "R_X0 R_ELR NCMDS CMDS CMD_SIZE MAX_CMDS BOOT_ENTRY BOOT_CONTEXT KIND_SYNC KIND_UNEXPECTED "
    "OP_SMC OP_WRITE32 OP_WRITE64 OP_MSR"
).split()


def assembler_constants() -> str:
    """The layout as GNU assembler ``.equ`` lines (prefixed ``MB_``) for the shim."""
    lines = ["/* Generated from qemu_bridge/mailbox.py by guest/build.py: do not edit. */"]
    for name in _LAYOUT_NAMES:
        lines.append(f".equ MB_{name}, {globals()[name]:#x}")
    for index, reg in enumerate(MSR_REGISTERS):
        lines.append(f".equ MSR_{reg.upper()}, {index}")
    return "\n".join(lines) + "\n"


def payload_params(abi: str, ncpus: int, gicd: int, gicr: int, uart: int) -> bytes:
    """The block bare-metal payloads read at PAYLOAD_PARAMS (guest/payloads/lib.h)."""
    return struct.pack("<6Q", PARAMS_MAGIC, int(abi.lstrip("v")), ncpus, gicd, gicr, uart)


def mailbox_address(cpu: int) -> int:
    if not 0 <= cpu < MAX_CPUS:
        raise ValueError(f"cpu {cpu} outside 0..{MAX_CPUS - 1}")
    return MAILBOX_BASE + cpu * MAILBOX_SIZE


_RECORD = struct.Struct("<8Q8Q5Q")   # SEQ_REQ..HPFAR, x0..x7, TTBR0..MPIDR


def decode_exit(cpu: int, buf, offset: int = 0) -> tuple[int, int, VcpuExit]:
    """(seq, kind, exit) from an exit record at `offset` of `buf` (bytes or the mapped RAM)."""
    v = _RECORD.unpack_from(buf, offset)
    return v[0], v[2], VcpuExit(cpu, v[3], v[4], v[5], v[8:16], v[6], v[7], v[16], v[17],
                                v[18], v[19], v[20])


RECORD_BYTES = _RECORD.size
_PLAIN_REPLY = struct.Struct("<8QQQQ")        # x0..x7, ELR, pad, ncmds = 0


@dataclass
class RawReply:
    """What the shim applies: commands first, then x0..x7 and ELR_EL2, then eret."""
    x: list[int]
    elr: int
    commands: list[tuple[int, int, int]] = field(default_factory=list)

    def encode(self) -> bytes:
        """Bytes for offsets R_X0 .. end of the commands (SEQ_ACK is written separately)."""
        if not self.commands:                   # the common case, kept cheap
            return _PLAIN_REPLY.pack(*[v & 0xFFFF_FFFF_FFFF_FFFF for v in self.x], self.elr, 0, 0)
        if len(self.commands) > MAX_CMDS:
            raise ValueError(f"{len(self.commands)} reply commands, the shim takes {MAX_CMDS}")
        buf = bytearray(CMDS - R_X0 + CMD_SIZE * len(self.commands))
        struct.pack_into("<8Q", buf, 0, *[v & 0xFFFF_FFFF_FFFF_FFFF for v in self.x])
        struct.pack_into("<QQQ", buf, R_ELR - R_X0, self.elr, 0, len(self.commands))
        for i, (op, a, b) in enumerate(self.commands):
            struct.pack_into("<QQQ", buf, CMDS - R_X0 + CMD_SIZE * i, op, a,
                             b & 0xFFFF_FFFF_FFFF_FFFF)
        return bytes(buf)

    @staticmethod
    def decode_results(buf: bytes) -> list[int]:
        """x0..x7 of a reply area after the shim ran it (an OP_SMC stores its results there)."""
        return list(struct.unpack_from("<8Q", buf, 0))
