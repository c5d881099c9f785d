"""The primary VM's capability space: the objects the hypervisor gives it at boot.

One table, used by the hypervisor to resolve capability IDs and by ``dts`` to write the
/hypervisor node (so the DT and the hypervisor cannot disagree).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .msgq import MessageQueue, MsgqCap
from .rm.server import ResourceManager
from .rm.state import VMID_HLOS

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

log = logging.getLogger("gunyah_sim.cspace")


@dataclass(frozen=True)
class QueueEnd:
    capid: int
    spi: int          # the primary VM's interrupt for this end (SPI number, INTID - 32)


# Resource Manager message queues of the primary VM (DT: gunyah-resource-mgr reg/interrupts).
# SPIs: QEMU virt's GIC has 224 (INTIDs 32..255); virt's own devices end at SPI 175.
RM_TX = QueueEnd(capid=0x10, spi=200)     # primary -> RM; interrupt: space available again
RM_RX = QueueEnd(capid=0x11, spi=201)     # RM -> primary; interrupt: message available
# A loopback queue whose both ends belong to the primary VM, for the conformance payloads.
LOOP_TX = QueueEnd(capid=0x20, spi=202)
LOOP_RX = QueueEnd(capid=0x21, spi=203)
LOOP_DEPTH = 4
# Capability IDs are slot indices (the real hypervisor's debug encoding): IDs at or above
# CSPACE_SLOTS do not decode (ARGUMENT_INVALID); a slot with no capability is CAP_NULL.
CSPACE_SLOTS = 1024
# Where the host puts the test VMs' images and DTBs for the "vm" conformance suite (RAM that
# the bare-metal primary payload does not otherwise use), 2 MiB each.
VM_TEST_MEMORY = (0x5000_0000, 0x5040_0000, 0x5080_0000)
# ... and for a Linux VM (kernel at 0, DTB at 64 MiB, initramfs at 65 MiB): 128 MiB.
LINUX_VM_MEMORY = (0x4A00_0000, 128 << 20)
EMPTY_SLOT_CAPID = 0x30


def c_header() -> str:
    """The constants bare-metal payloads need, as a C header (built by guest/build.py)."""
    values = {
        "RM_TX_CAPID": RM_TX.capid, "RM_RX_CAPID": RM_RX.capid,
        "RM_TX_SPI": RM_TX.spi, "RM_RX_SPI": RM_RX.spi,
        "LOOP_TX_CAPID": LOOP_TX.capid, "LOOP_RX_CAPID": LOOP_RX.capid,
        "LOOP_TX_SPI": LOOP_TX.spi, "LOOP_RX_SPI": LOOP_RX.spi, "LOOP_DEPTH": LOOP_DEPTH,
        "EMPTY_SLOT_CAPID": EMPTY_SLOT_CAPID,
        "VM_A_PA": VM_TEST_MEMORY[0], "VM_B_PA": VM_TEST_MEMORY[1],
        "VM_C_PA": VM_TEST_MEMORY[2],
        "LINUX_VM_PA": LINUX_VM_MEMORY[0], "LINUX_VM_SIZE": LINUX_VM_MEMORY[1],
    }
    return "".join(f"#define GSIM_{k} {v:#x}ull\n" for k, v in values.items())


class PrimaryVm:
    def __init__(self, hv: "Hypervisor"):
        self.hv = hv
        self.vmid = VMID_HLOS       # the primary ("HLOS") VM's VMID: 3, as the real RM's
        self.rm_tx = MessageQueue("rm-tx", on_not_full=lambda q: hv.raise_spi(RM_TX.spi),
                                  consumer=self._to_rm)
        # The RM is the sender on rm-rx: when the full queue gets room, it sends more of its
        # backlog (a reply can have more fragments than the queue holds).
        self.rm_rx = MessageQueue("rm-rx", on_not_empty=lambda q: hv.raise_spi(RM_RX.spi),
                                  on_not_full=lambda q: self.rm.pump())
        self.loop = MessageQueue("loopback", depth=LOOP_DEPTH,
                                 on_not_empty=lambda q: hv.raise_spi(LOOP_RX.spi),
                                 on_not_full=lambda q: hv.raise_spi(LOOP_TX.spi))
        self.cspace = {
            RM_TX.capid: MsgqCap(self.rm_tx, "send"),
            RM_RX.capid: MsgqCap(self.rm_rx, "receive"),
            LOOP_TX.capid: MsgqCap(self.loop, "send"),
            LOOP_RX.capid: MsgqCap(self.loop, "receive"),
        }
        self.rm = ResourceManager(hv.abi, self._to_primary, primary_vmid=self.vmid,
                                  tracer=hv.tracer)
        self.rm_sink = self.rm.receive      # what arrives on rm-tx; None: no RM attached

    def grant(self, obj, first: int = 0x100) -> int:
        """Put a capability to `obj` in a free slot of the primary's cspace; its capability ID."""
        for capid in range(first, CSPACE_SLOTS):
            if capid not in self.cspace:
                self.cspace[capid] = obj
                return capid
        raise MemoryError("the primary VM's cspace is full")

    def _to_primary(self, message: bytes) -> bool:
        """The RM's send: one message into rm-rx, as the RM sends (no push); False if full."""
        if self.rm_rx.full:
            return False
        self.rm_rx.send(message, push=False)
        return True

    def _to_rm(self, queue: MessageQueue, message: bytes) -> None:
        if self.rm_sink is None:
            log.info("message of %d bytes for the RM, which is not attached: dropped", len(message))
            return
        self.rm_sink(message)
