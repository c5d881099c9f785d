"""The Resource Manager's state: VMIDs, the VM lifecycle and memory parcels; no wire format.

Each request method takes the caller's VMID and a decoded request, checks everything first
and raises RmFailure (nothing changed) or applies the change and returns the reply data.
The checks, their order and the error codes follow the real RM (RMSRC vm_mgnt.c,
vm_creation.c, memparcel.c; docs/rm.md).  Where the real RM would run a VM, the simulator
calls a hook (`Hooks`), so a later layer can build stage-2 tables and run vCPUs.

VM states (real RM): ALLOC_VMID creates a VM in LOAD; CONFIG_IMAGE -> INIT (AUTH for
authenticated images); INIT -> READY; START -> RUNNING; STOP -> EXITED; RESET (from EXITED,
READY or INIT_FAILED) -> RESETTING -> RESET (completed after the reply); DEALLOC_VMID from
LOAD or RESET.  Every state change is announced to the VM's owner with a VM_STATUS
notification; an exit also with VM_EXITED.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

from . import messages as m
from .errors import RmError, RmFailure
from .parcels import PAGE, Parcel, ParcelTable

log = logging.getLogger("gunyah_sim.rm")

VMID_HYP = 0x0
VMID_HLOS = 0x3            # the primary VM (RMSRC include/rm_types.h VMID_HLOS)
VMID_RM = 0xFF
DYNAMIC_VMIDS = range(0x80, 0xC0)          # RMSRC VMID_DYNAMIC_BASE..VMID_DYNAMIC_END
REQUESTABLE_VMIDS = range(1, 64)           # a specific VMID must be below 64


class VmStatus(IntEnum):
    NO_STATE = 0
    INIT = 1
    READY = 2
    RUNNING = 3
    PAUSED = 4
    LOAD = 5
    AUTH = 6
    INIT_FAILED = 8
    EXITED = 9
    RESETTING = 10
    RESET = 11


@dataclass
class Vm:
    vmid: int
    owner: int
    status: VmStatus = VmStatus.LOAD
    os_status: int = 0
    app_status: int = 0
    image: m.ConfigImageRequest | None = None
    firmware: m.SetFirmwareMemRequest | None = None
    boot_context: dict = field(default_factory=dict)       # (reg_set, index) -> value
    demand_paging: tuple = ()                               # ((base, size), ...)
    address_layout: dict = field(default_factory=dict)     # range_id -> (base, size)


def _nothing(*args) -> None:
    return None


@dataclass
class Hooks:
    """What the hypervisor does when the RM changes something.  All do nothing by default.

    on_vm_init and on_vm_start may raise RmFailure: the VM then goes to INIT_FAILED and the
    request fails with that error, as when the real RM cannot create a VM's resources.
    """
    on_vm_alloc: Callable[[Vm], None] = _nothing
    on_vm_init: Callable[[Vm], None] = _nothing
    on_vm_start: Callable[[Vm], None] = _nothing
    on_vm_stop: Callable[[Vm, bool, int], None] = _nothing      # vm, force, reason
    on_vm_exit: Callable[[Vm], None] = _nothing
    on_vm_reset: Callable[[Vm], None] = _nothing
    on_vm_dealloc: Callable[[Vm], None] = _nothing
    on_lend: Callable[[Parcel], None] = _nothing        # a parcel is complete (all appends in)
    on_share: Callable[[Parcel], None] = _nothing
    on_donate: Callable[[Parcel], None] = _nothing
    on_append: Callable[[Parcel, tuple], None] = _nothing
    on_reclaim: Callable[[Parcel], None] = _nothing
    on_accept: Callable[[Vm, Parcel], None] = _nothing  # a borrower maps a parcel
    on_release: Callable[[Vm, Parcel], None] = _nothing
    hyp_resources: Callable[[Vm], list] = lambda vm: []   # GET_HYP_RESOURCES entries


class RmState:
    def __init__(self, hooks: Hooks | None = None, *, primary_vmid: int = VMID_HLOS,
                 notify: Callable[[int, m.Notification], None] | None = None,
                 mem_notifications: bool = False, exit_on_stop: bool = True):
        self.hooks = hooks or Hooks()
        self.primary = primary_vmid
        self.notify = notify or (lambda vmid, note: None)     # (destination VMID, payload)
        self.mem_notifications = mem_notifications   # MEM_ACCEPTED / MEM_RELEASED to owners
        # With no guest OS to ask, a non-forced VM_STOP exits the VM at once (a later layer
        # that runs the guest turns this off and reports the exit with vm_exited()).
        self.exit_on_stop = exit_on_stop
        self.vms: dict[int, Vm] = {}
        self.parcels = ParcelTable(primary_vmid, vm_exists=lambda v: v in self.vms)
        self.deferred: list[Callable[[], None]] = []    # work the RM finishes after replying

    # --- helpers ------------------------------------------------------------------------------
    def snapshot(self):
        """A deep copy of everything a request can change (tests compare snapshots)."""
        p = self.parcels
        return copy.deepcopy((self.vms, p.parcels, list(p.pages), list(p.owners),
                              len(self.deferred)))

    def run_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()

    def _vm(self, vmid: int, missing: RmError = RmError.VMID_INVALID) -> Vm:
        vm = self.vms.get(vmid)
        if vm is None:
            raise RmFailure(missing, f"no VM {vmid}")
        return vm

    def _owned(self, caller: int, vmid: int, not_owner: RmError = RmError.DENIED,
               missing: RmError = RmError.VMID_INVALID) -> Vm:
        vm = self._vm(vmid, missing)
        if vm.owner != caller:
            raise RmFailure(not_owner, f"VM {caller} does not own VM {vmid}")
        return vm

    @staticmethod
    def _expect(vm: Vm, *allowed: VmStatus) -> None:
        if vm.status not in allowed:
            raise RmFailure(RmError.VM_STATE, f"VM {vm.vmid} is {vm.status.name}")

    def _set_status(self, vm: Vm, status: VmStatus) -> None:
        log.info("VM %d: %s -> %s", vm.vmid, vm.status.name, status.name)
        vm.status = status
        self.notify(vm.owner, m.VmStatusNotification(vm.vmid, int(status), vm.os_status,
                                                     vm.app_status))

    def _parcel_for(self, vm: Vm, handle: int, offsets: tuple) -> Parcel:
        """The complete parcel `handle` lent or shared to `vm`; (offset, size) pairs must fit."""
        parcel = self.parcels.parcels.get(handle)
        if parcel is None or vm.vmid not in parcel.borrowers or not parcel.complete:
            raise RmFailure(RmError.MEM_INVALID, f"parcel {handle:#x} is not VM {vm.vmid}'s")
        for offset, size in offsets:
            if offset + size > parcel.size:
                raise RmFailure(RmError.ARGUMENT_INVALID,
                                f"{offset:#x}+{size:#x} outside the {parcel.size:#x}-byte parcel")
        return parcel

    # --- VMIDs --------------------------------------------------------------------------------
    def alloc_vmid(self, caller: int, requested: int) -> tuple[int, bool]:
        """Returns the VMID and whether it was chosen by the RM (then the reply carries it)."""
        if caller != self.primary:
            raise RmFailure(RmError.DENIED, f"VM {caller} may not create VMs")
        reserved = {VMID_HYP, self.primary, VMID_RM}
        if requested == 0:
            free = [v for v in DYNAMIC_VMIDS if v not in self.vms]
            if not free:
                raise RmFailure(RmError.NORESOURCE, "no dynamic VMID left")
            vmid, dynamic = free[0], True
        elif requested in REQUESTABLE_VMIDS and requested not in self.vms \
                and requested not in reserved:
            vmid, dynamic = requested, False
        else:
            raise RmFailure(RmError.NORESOURCE, f"VMID {requested} is not available")
        vm = self.vms[vmid] = Vm(vmid, caller)
        log.info("VM %d allocated for VM %d", vmid, caller)
        self.hooks.on_vm_alloc(vm)
        return vmid, dynamic

    def dealloc_vmid(self, caller: int, vmid: int) -> None:
        vm = self._owned(caller, vmid)
        self._expect(vm, VmStatus.LOAD, VmStatus.RESET)
        self.parcels.forget_vm(vmid, heir=vm.owner)
        del self.vms[vmid]
        log.info("VM %d deallocated", vmid)
        self.hooks.on_vm_dealloc(vm)

    def get_vmid(self, caller: int) -> int:
        return caller

    # --- lifecycle ----------------------------------------------------------------------------
    def config_image(self, caller: int, req: m.ConfigImageRequest) -> None:
        if caller != self.primary:
            raise RmFailure(RmError.DENIED, f"VM {caller} may not configure VMs")
        vm = self._owned(caller, req.vmid)
        self._expect(vm, VmStatus.LOAD, VmStatus.RESET)
        self._parcel_for(vm, req.mem_handle, ((req.image_offset, req.image_size),
                                              (req.dtb_offset, req.dtb_size)))
        vm.image = req
        status = {m.AUTH_NONE: VmStatus.INIT, m.AUTH_ANDROID_PVM: VmStatus.INIT,
                  m.AUTH_PIL_ELF: VmStatus.AUTH}.get(req.auth, VmStatus.INIT_FAILED)
        self._set_status(vm, status)

    def init(self, caller: int, vmid: int) -> None:
        if caller != self.primary:
            raise RmFailure(RmError.DENIED, f"VM {caller} may not initialise VMs")
        vm = self._owned(caller, vmid)
        self._expect(vm, VmStatus.INIT)
        self._run_or_fail(vm, self.hooks.on_vm_init)
        self._set_status(vm, VmStatus.READY)

    def _run_or_fail(self, vm: Vm, hook: Callable[[Vm], None]) -> None:
        try:
            hook(vm)
        except RmFailure:
            self._set_status(vm, VmStatus.INIT_FAILED)
            raise

    def start(self, caller: int, vmid: int) -> None:
        vm = self._owned(caller, vmid)
        self._expect(vm, VmStatus.READY)
        self._run_or_fail(vm, self.hooks.on_vm_start)
        for parcel in self.parcels.for_borrower(vmid):
            if parcel.complete:
                self._accept(vm, parcel)
        self._set_status(vm, VmStatus.RUNNING)

    def stop(self, caller: int, req: m.VmStopRequest) -> None:
        vm = self._owned(caller, req.vmid, not_owner=RmError.VMID_INVALID)
        self._expect(vm, VmStatus.RUNNING, VmStatus.PAUSED)
        force = bool(req.flags & m.STOP_FLAG_FORCE)
        self.hooks.on_vm_stop(vm, force, req.reason)
        if force:
            self._exit(vm, m.EXIT_VM_STOP_FORCED)
        elif self.exit_on_stop:
            self._exit(vm, m.EXIT_VM_EXIT)

    def vm_exited(self, vmid: int, exit_type: int = m.EXIT_VM_EXIT, flags: int = 0,
                  exit_code: int = m.EXIT_CODE_NORMAL) -> None:
        """The hypervisor reports that a running VM stopped by itself (e.g. SYSTEM_OFF)."""
        vm = self._vm(vmid)
        self._expect(vm, VmStatus.RUNNING, VmStatus.PAUSED)
        self._exit(vm, exit_type, flags, exit_code)

    def _exit(self, vm: Vm, exit_type: int, flags: int = 0, code: int = m.EXIT_CODE_NORMAL):
        self._release_all(vm)
        self._set_status(vm, VmStatus.EXITED)
        self.notify(vm.owner, m.VmExitedNotification(
            vm.vmid, exit_type, m.VmExitedNotification.reason_word(flags, code)))
        self.hooks.on_vm_exit(vm)

    def reset(self, caller: int, vmid: int) -> None:
        vm = self._owned(caller, vmid, not_owner=RmError.VMID_INVALID)
        self._expect(vm, VmStatus.EXITED, VmStatus.READY, VmStatus.INIT_FAILED)
        self._release_all(vm)
        self._set_status(vm, VmStatus.RESETTING)
        self.hooks.on_vm_reset(vm)
        self.deferred.append(lambda: self._finish_reset(vm))

    def _finish_reset(self, vm: Vm) -> None:
        if self.vms.get(vm.vmid) is not vm or vm.status != VmStatus.RESETTING:
            return
        self.parcels.forget_vm(vm.vmid, heir=vm.owner)
        vm.image, vm.firmware, vm.boot_context = None, None, {}
        vm.demand_paging, vm.address_layout = (), {}
        self._set_status(vm, VmStatus.RESET)

    # --- configuration before start -----------------------------------------------------------
    def set_boot_context(self, caller: int, req: m.SetBootContextRequest) -> None:
        vm = self._owned(caller, req.vmid)
        self._expect(vm, VmStatus.READY)
        limit = {m.REG_SET_X: 32, m.REG_SET_PC: 1, m.REG_SET_SP_EL1: 1}.get(req.reg_set, 0)
        if req.reg_index >= limit:
            raise RmFailure(RmError.ARGUMENT_INVALID,
                            f"register set {req.reg_set} index {req.reg_index}")
        vm.boot_context[(req.reg_set, req.reg_index)] = req.value

    def set_firmware_mem(self, caller: int, req: m.SetFirmwareMemRequest) -> None:
        vm = self._owned(caller, req.vmid, missing=RmError.NORESOURCE)
        self._expect(vm, VmStatus.INIT)
        self._parcel_for(vm, req.mem_handle, ((req.offset, req.size),))
        vm.firmware = req

    def set_demand_paging(self, caller: int, req: m.SetDemandPagingRequest) -> None:
        vm = self._owned(caller, req.vmid)
        self._expect(vm, VmStatus.LOAD, VmStatus.AUTH, VmStatus.INIT)
        for base, size in req.ranges:
            if base % PAGE or size % PAGE or not size:
                raise RmFailure(RmError.ARGUMENT_INVALID, f"range {base:#x}+{size:#x}")
        vm.demand_paging = tuple(req.ranges)

    def set_address_layout(self, caller: int, req: m.SetAddressLayoutRequest) -> None:
        vm = self._owned(caller, req.vmid)
        self._expect(vm, VmStatus.LOAD, VmStatus.AUTH, VmStatus.INIT)
        if req.range_id not in (m.RANGE_IMAGE, m.RANGE_FIRMWARE) or req.base % PAGE \
                or req.size % PAGE:
            raise RmFailure(RmError.ARGUMENT_INVALID,
                            f"range {req.range_id}: {req.base:#x}+{req.size:#x}")
        vm.address_layout[req.range_id] = (req.base, req.size)

    def get_hyp_resources(self, caller: int, vmid: int) -> list:
        vm = self._vm(vmid)
        if caller not in (vm.owner, vm.vmid):
            raise RmFailure(RmError.DENIED, f"VM {caller} may not query VM {vmid}")
        return list(self.hooks.hyp_resources(vm))

    # --- memory parcels -----------------------------------------------------------------------
    def create_parcel(self, caller: int, trans: int, req: m.MemParcelRequest) -> int:
        parcel = self.parcels.create(caller, trans, req)
        log.info("VM %d: %s parcel %#x, %d range(s), ACL %s", caller, parcel.kind,
                 parcel.handle, len(parcel.ranges), parcel.acl)
        if parcel.complete:
            self._completed(parcel)
        return parcel.handle

    def append(self, caller: int, req: m.MemAppendRequest) -> None:
        parcel = self.parcels.append(caller, req.handle, req.flags, req.sgl)
        self.hooks.on_append(parcel, tuple(req.sgl))
        if parcel.complete:
            self._completed(parcel)

    def reclaim(self, caller: int, req: m.MemReclaimRequest) -> None:
        parcel = self.parcels.reclaim(caller, req.handle, req.flags)
        log.info("VM %d: parcel %#x reclaimed", caller, parcel.handle)
        self.hooks.on_reclaim(parcel)

    def _completed(self, parcel: Parcel) -> None:
        {m.TRANS_LEND: self.hooks.on_lend, m.TRANS_SHARE: self.hooks.on_share,
         m.TRANS_DONATE: self.hooks.on_donate}[parcel.trans_type](parcel)
        for vmid in parcel.borrowers:            # borrowers already running map it now
            vm = self.vms.get(vmid)
            if vm is not None and vm.status in (VmStatus.RUNNING, VmStatus.PAUSED) \
                    and parcel.handle in self.parcels.parcels:
                self._accept(vm, parcel)

    def _accept(self, vm: Vm, parcel: Parcel) -> None:
        self.parcels.accept(vm.vmid, parcel.handle)
        self.hooks.on_accept(vm, parcel)
        if self.mem_notifications:
            self.notify(parcel.owner, m.MemAcceptedNotification(parcel.handle, vm.vmid))

    def _release_all(self, vm: Vm) -> None:
        for parcel in list(self.parcels.parcels.values()):
            if vm.vmid in parcel.accepted:
                self.parcels.release(vm.vmid, parcel.handle)
                self.hooks.on_release(vm, parcel)
                if self.mem_notifications:
                    self.notify(parcel.owner, m.MemReleasedNotification(parcel.handle, vm.vmid))
