"""What the Resource Manager's decisions do to the hypervisor: the RM hooks, filled in.

- VM_START builds the VM from the parcel named by VM_CONFIG_IMAGE and runs its vCPU 0.
- VM_STOP takes its vCPUs off the CPUs; a VM that powers off by itself is reported to the RM,
  which notifies the owner (VM_EXITED, VM_STATUS).
- MEM_LEND / MEM_DONATE remove the pages from the primary VM's stage 2; reclaim maps them back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import fdt

from .rm import messages as m
from .rm.errors import RmError, RmFailure
from .vm import DEFAULT_IPA_BASE, InvalidateVmTlb

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

log = logging.getLogger("gunyah_sim.vm")

RESOURCE_VCPU = 4               # GET_HYP_RESOURCES entry type (docs/rm.md)


@dataclass(frozen=True)
class VcpuCap:
    """A capability to a VM's vCPU.  (No vCPU hypercall is implemented yet: the v6 flow has
    the hypervisor schedule vCPUs itself; v17's vcpu_run would take this capability.)"""
    vcpu: object


def _parcel_bytes(hv: "Hypervisor", ranges: list[tuple[int, int]], offset: int, size: int) -> bytes:
    """`size` bytes at `offset` into a parcel whose pages are the (address, size) ranges."""
    out = bytearray()
    for base, length in ranges:
        if offset < length and size > 0:
            n = min(length - offset, size)
            out += hv.backend.read_phys(base + offset, n)
            size -= n
            offset = 0
        else:
            offset -= length
    return bytes(out)


def vm_layout(dtb: bytes) -> tuple[int, int]:
    """(IPA base, vCPU count) from the VM's own DT: gunyah-vm-config/memory and /cpus."""
    base, vcpus = DEFAULT_IPA_BASE, 1
    try:
        tree = fdt.parse_dtb(dtb)
        if tree.exist_property("base-address", "/gunyah-vm-config/memory"):
            words = list(tree.get_property("base-address", "/gunyah-vm-config/memory"))
            base = (words[0] << 32) | words[1] if len(words) == 2 else words[0]
        if tree.exist_node("/cpus"):
            vcpus = max(1, sum(n.name.startswith("cpu@") for n in tree.get_node("/cpus").nodes))
    except Exception as err:            # a VM image without a usable DT: defaults
        log.info("VM DT not usable (%s): IPA base %#x, 1 vCPU", err, base)
    return base, vcpus


def attach(hv: "Hypervisor") -> None:
    state = hv.primary.rm.state
    hooks = state.hooks
    vms = hv.vms
    state.exit_on_stop = False        # the VM really runs: its exit is reported when it happens

    def on_vm_start(vm) -> None:
        if not vms.reserved:
            log.warning("VM_START of VM %d refused (NORESOURCE): no CPUs are reserved for "
                        "VMs; start gunyah-sim with --vm-cpus N", vm.vmid)
            raise RmFailure(RmError.NORESOURCE, "no CPUs are reserved for VMs (--vm-cpus N)")
        image = vm.image
        parcel = state.parcels.lookup(image.mem_handle)
        dtb = _parcel_bytes(hv, parcel.ranges, image.dtb_offset, min(image.dtb_size, 1 << 20))
        base, vcpus = vm_layout(dtb)
        regions, ipa = [], base
        for pa, size in parcel.ranges:
            regions.append((ipa, pa, size))
            ipa += size
        try:
            vms.create(vm.vmid, regions, entry=base + image.image_offset,
                       x0=base + image.dtb_offset, ncpus=vcpus)
        except (ValueError, MemoryError) as err:
            raise RmFailure(RmError.NORESOURCE, str(err)) from None

    in_stop = []

    def on_vm_stop(vm, force: bool, reason: int) -> None:
        # A forced stop is reported by the RM itself; otherwise the exit is reported when the
        # last vCPU has left its CPU (after the STOP reply, as the real RM answers first).
        in_stop.append(vm.vmid)
        try:
            vms.stop(vm.vmid, "stopped by its owner" + (" (forced)" if force else ""),
                     report=not force)
        finally:
            in_stop.pop()

    def _report_exit(vmid: int, exit_type: int) -> None:
        vm = state.vms.get(vmid)
        if vm is not None and vm.status in (vm.status.RUNNING, vm.status.PAUSED):
            state.vm_exited(vmid, exit_type)
            hv.primary.rm.pump()

    def on_exit(runtime) -> None:     # the VM's vCPUs are all off their CPUs
        if runtime.vmid in in_stop:   # still inside the RM's STOP handling: after its reply
            state.deferred.append(lambda: _report_exit(runtime.vmid, m.EXIT_VM_EXIT))
        else:
            _report_exit(runtime.vmid, m.EXIT_VM_EXIT)

    def isolate(parcel) -> None:
        vms.primary_unmap(parcel.ranges)
        hv.add_call_action(InvalidateVmTlb())

    def restore(parcel) -> None:
        if parcel.trans_type != m.TRANS_SHARE:
            vms.primary_map(parcel.ranges)

    def hyp_resources(vm) -> list:
        """GET_HYP_RESOURCES: the VM's vCPUs, as capabilities the primary VM holds."""
        runtime = vms.vms.get(vm.vmid)
        if runtime is None:
            return []
        entries = []
        for vcpu in runtime.vcpus:
            capid = vcpu_caps.get(vcpu)
            if capid is None:
                capid = vcpu_caps[vcpu] = hv.primary.grant(VcpuCap(vcpu))
            entries.append(m.HypResource(type=RESOURCE_VCPU, partner_vmid=vm.vmid,
                                         resource_handle=vcpu.index, cap_id=capid))
        return entries

    vcpu_caps: dict = {}
    hooks.hyp_resources = hyp_resources
    hooks.on_vm_start = on_vm_start
    hooks.on_vm_stop = on_vm_stop
    hooks.on_lend = isolate
    hooks.on_donate = isolate
    hooks.on_reclaim = restore
    vms.on_exit = on_exit
