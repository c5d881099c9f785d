"""The exit record decoder reads every field at the offset the shim writes it (mailbox.py)."""
import struct

from qemu_bridge import mailbox


def test_decode_exit_uses_the_declared_offsets():
    buf = bytearray(mailbox.MAILBOX_SIZE)
    fields = {"SEQ_REQ": 7, "KIND": mailbox.KIND_SYNC, "ESR": 0x5A000000, "ELR": 0x1000,
              "SPSR": 0x3C5, "FAR": 0x11, "HPFAR": 0x22, "TTBR0_EL1": 0x4100_0000,
              "TTBR1_EL1": 0x4200_0000, "TCR_EL1": 0x32B5_5B510, "SCTLR_EL1": 0x30D0_5B9D,
              "MPIDR": 0x8000_0000, "VBAR_EL1": 0xFFFF_8000_0801_0000}
    for name, value in fields.items():
        struct.pack_into("<Q", buf, getattr(mailbox, name), value)
    for i in range(mailbox.NGPRS):
        struct.pack_into("<Q", buf, mailbox.X0 + 8 * i, 100 + i)
    seq, kind, e = mailbox.decode_exit(0, bytes(buf))
    assert (seq, kind) == (7, mailbox.KIND_SYNC)
    assert (e.esr, e.elr, e.spsr, e.far, e.hpfar) == (0x5A000000, 0x1000, 0x3C5, 0x11, 0x22)
    assert list(e.x) == [100 + i for i in range(mailbox.NGPRS)]
    assert (e.ttbr0, e.ttbr1, e.tcr, e.sctlr) == (0x4100_0000, 0x4200_0000, 0x32B5_5B510,
                                                   0x30D0_5B9D)
    assert (e.mpidr, e.vbar) == (0x8000_0000, 0xFFFF_8000_0801_0000)
