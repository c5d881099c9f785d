"""RM state without the wire: VMIDs, the VM lifecycle, memory parcels and their invariants."""
import pytest
from hypothesis import given, settings, strategies as st

from gunyah_el2.rm import messages as m
from gunyah_el2.rm.errors import RmError, RmFailure
from gunyah_el2.rm.parcels import PAGE
from gunyah_el2.rm.state import VMID_HLOS, Hooks, RmState, VmStatus

RAM = 0x4000_0000
HLOS = VMID_HLOS


class Recorder:
    """Hooks that record every call, and notifications as (destination, payload)."""

    def __init__(self):
        self.calls = []
        self.notes = []

    def hooks(self, **override):
        names = [n for n in Hooks.__dataclass_fields__ if n.startswith("on_")]
        hooks = {n: (lambda *a, _n=n: self.calls.append((_n, *a))) for n in names}
        hooks.update(override)
        return Hooks(**hooks)

    def names(self):
        return [c[0] for c in self.calls]

    def statuses(self, vmid):
        return [VmStatus(n.vm_status).name for _, n in self.notes
                if isinstance(n, m.VmStatusNotification) and n.vmid == vmid]


def make(**hook_override):
    rec = Recorder()
    st_ = RmState(rec.hooks(**hook_override), notify=lambda vmid, n: rec.notes.append((vmid, n)))
    return st_, rec


def fails(error, fn, *args):
    with pytest.raises(RmFailure) as exc:
        fn(*args)
    assert exc.value.error == error, exc.value
    return exc.value


def lend(state, vmid, page=0, pages=4, caller=HLOS, flags=0, trans=m.TRANS_LEND, acl=None):
    acl = acl if acl is not None else ((vmid, 7),) + (((caller, 7),) if trans == m.TRANS_SHARE
                                                      else ())
    return state.create_parcel(caller, trans, m.MemParcelRequest(
        flags=flags, label=0x11, acl=acl, sgl=((RAM + page * PAGE, pages * PAGE),)))


def ready_vm(state, page=0):
    vmid, _ = state.alloc_vmid(HLOS, 0)
    handle = lend(state, vmid, page)
    state.config_image(HLOS, m.ConfigImageRequest(vmid, 0, handle, 0, 0, 0x1000, 0x1000))
    state.init(HLOS, vmid)
    return vmid, handle


# --- VMIDs ------------------------------------------------------------------------------------
def test_dynamic_and_requested_vmids():
    state, rec = make()
    assert state.alloc_vmid(HLOS, 0) == (0x80, True)
    assert state.alloc_vmid(HLOS, 0) == (0x81, True)
    assert state.alloc_vmid(HLOS, 5) == (5, False)
    assert state.vms[5].status == VmStatus.LOAD and state.vms[5].owner == HLOS
    for taken in (5, HLOS, 0xFF, 64, 0x80):
        fails(RmError.NORESOURCE, state.alloc_vmid, HLOS, taken)
    fails(RmError.DENIED, state.alloc_vmid, 0x80, 0)
    assert rec.names() == ["on_vm_alloc"] * 3


def test_dynamic_vmids_run_out():
    state, _ = make()
    for i in range(64):
        assert state.alloc_vmid(HLOS, 0) == (0x80 + i, True)
    fails(RmError.NORESOURCE, state.alloc_vmid, HLOS, 0)
    state.dealloc_vmid(HLOS, 0x85)
    assert state.alloc_vmid(HLOS, 0) == (0x85, True)


def test_dealloc_errors():
    state, _ = make()
    fails(RmError.VMID_INVALID, state.dealloc_vmid, HLOS, 0x80)
    vmid, _ = ready_vm(state)
    fails(RmError.DENIED, state.dealloc_vmid, 0x42, vmid)
    fails(RmError.VM_STATE, state.dealloc_vmid, HLOS, vmid)      # READY
    assert vmid in state.vms


def test_primary_vmid_is_hlos():
    state, _ = make()
    assert state.get_vmid(HLOS) == 3


# --- lifecycle --------------------------------------------------------------------------------
def test_v17_lifecycle_with_notifications_and_hooks():
    state, rec = make()
    vmid, handle = ready_vm(state)
    state.set_boot_context(HLOS, m.SetBootContextRequest(vmid, m.REG_SET_PC, 0, 0x8000_0000))
    state.start(HLOS, vmid)
    assert state.parcels.parcels[handle].accepted == {vmid}
    state.stop(HLOS, m.VmStopRequest(vmid, m.STOP_FLAG_FORCE, 3))
    assert state.vms[vmid].status == VmStatus.EXITED
    assert state.parcels.parcels[handle].accepted == set()
    exited = [n for _, n in rec.notes if isinstance(n, m.VmExitedNotification)]
    assert exited == [m.VmExitedNotification(vmid, m.EXIT_VM_STOP_FORCED, bytes(4))]
    state.reclaim(HLOS, m.MemReclaimRequest(handle))
    state.reset(HLOS, vmid)
    assert state.vms[vmid].status == VmStatus.RESETTING
    state.run_deferred()
    assert state.vms[vmid].status == VmStatus.RESET
    state.dealloc_vmid(HLOS, vmid)
    assert rec.statuses(vmid) == ["INIT", "READY", "RUNNING", "EXITED", "RESETTING", "RESET"]
    assert all(dest == HLOS for dest, _ in rec.notes)
    assert rec.names() == ["on_vm_alloc", "on_lend", "on_vm_init", "on_vm_start", "on_accept",
                           "on_vm_stop", "on_release", "on_vm_exit", "on_reclaim",
                           "on_vm_reset", "on_vm_dealloc"]


def test_graceful_stop_exits_at_once_unless_the_guest_runs():
    state, rec = make()
    vmid, _ = ready_vm(state)
    state.start(HLOS, vmid)
    state.stop(HLOS, m.VmStopRequest(vmid, 0, 0))
    assert state.vms[vmid].status == VmStatus.EXITED
    assert [n.exit_type for _, n in rec.notes if isinstance(n, m.VmExitedNotification)] == [0]

    state, rec = make()
    state.exit_on_stop = False
    vmid, _ = ready_vm(state)
    state.start(HLOS, vmid)
    state.stop(HLOS, m.VmStopRequest(vmid, 0, 0))
    assert state.vms[vmid].status == VmStatus.RUNNING
    state.vm_exited(vmid, exit_type=m.EXIT_VM_EXIT, exit_code=1)
    assert state.vms[vmid].status == VmStatus.EXITED
    assert rec.notes[-1][1].reason == (1 << 16).to_bytes(4, "little")


def test_lifecycle_errors_change_nothing():
    state, _ = make()
    vmid, _ = state.alloc_vmid(HLOS, 0)
    cases = [
        (RmError.VM_STATE, state.init, HLOS, vmid),
        (RmError.VM_STATE, state.start, HLOS, vmid),
        (RmError.VM_STATE, state.stop, HLOS, m.VmStopRequest(vmid, 1)),
        (RmError.VM_STATE, state.reset, HLOS, vmid),
        (RmError.VMID_INVALID, state.start, HLOS, 0x99),
        (RmError.VMID_INVALID, state.init, HLOS, 0x99),
        (RmError.DENIED, state.init, 0x42, vmid),
        (RmError.DENIED, state.start, 0x42, vmid),
        (RmError.VMID_INVALID, state.stop, 0x42, m.VmStopRequest(vmid, 1)),
        (RmError.VMID_INVALID, state.reset, 0x42, vmid),
        (RmError.MEM_INVALID, state.config_image, HLOS, m.ConfigImageRequest(vmid, 0, 7, 0, 0,
                                                                              0, 0)),
        (RmError.DENIED, state.config_image, 0x42, m.ConfigImageRequest(vmid, 0, 0, 0, 0, 0,
                                                                        0)),
        (RmError.VM_STATE, state.set_boot_context, HLOS, m.SetBootContextRequest(vmid, 0, 0,
                                                                                 1)),
        (RmError.NORESOURCE, state.set_firmware_mem, HLOS,
         m.SetFirmwareMemRequest(0x99, 0, 0, 0, 0)),
        (RmError.VM_STATE, state.set_firmware_mem, HLOS, m.SetFirmwareMemRequest(vmid, 0, 0, 0,
                                                                                 0)),
        (RmError.ARGUMENT_INVALID, state.set_demand_paging, HLOS,
         m.SetDemandPagingRequest(vmid, ((0x1000, 0x10),))),
        (RmError.ARGUMENT_INVALID, state.set_address_layout, HLOS,
         m.SetAddressLayoutRequest(vmid, 2, 0, 0x1000)),
        (RmError.VMID_INVALID, state.get_hyp_resources, HLOS, 0x99),
        (RmError.DENIED, state.get_hyp_resources, 0x42, vmid),
    ]
    for error, fn, *args in cases:
        before = state.snapshot()
        fails(error, fn, *args)
        assert state.snapshot() == before, fn


def test_config_image_checks_the_parcel_and_auth():
    state, rec = make()
    vmid, _ = state.alloc_vmid(HLOS, 0)
    other, _ = state.alloc_vmid(HLOS, 0)
    handle = lend(state, other)                      # not lent to vmid
    fails(RmError.MEM_INVALID, state.config_image, HLOS,
          m.ConfigImageRequest(vmid, 0, handle, 0, 0, 0, 0))
    handle = lend(state, vmid, page=8, pages=1)
    fails(RmError.ARGUMENT_INVALID, state.config_image, HLOS,
          m.ConfigImageRequest(vmid, 0, handle, 0, 0, 0x800, 0x1000))
    state.config_image(HLOS, m.ConfigImageRequest(vmid, m.AUTH_PIL_ELF, handle, 0, 0, 0, 0))
    assert state.vms[vmid].status == VmStatus.AUTH
    fails(RmError.VM_STATE, state.init, HLOS, vmid)
    state.config_image(HLOS, m.ConfigImageRequest(other, 9, lend(state, other, page=12), 0, 0,
                                                  0, 0))
    assert state.vms[other].status == VmStatus.INIT_FAILED     # unknown auth: real RM


def test_hook_failure_puts_the_vm_in_init_failed():
    def refuse(vm):
        raise RmFailure(RmError.NORESOURCE, "no vCPUs")
    state, rec = make(on_vm_start=refuse)
    vmid, _ = ready_vm(state)
    fails(RmError.NORESOURCE, state.start, HLOS, vmid)
    assert state.vms[vmid].status == VmStatus.INIT_FAILED
    state.reset(HLOS, vmid)                                   # allowed from INIT_FAILED
    state.run_deferred()
    assert rec.statuses(vmid)[-3:] == ["INIT_FAILED", "RESETTING", "RESET"]


def test_configuration_messages_are_stored():
    state, _ = make()
    vmid, _ = state.alloc_vmid(HLOS, 0)
    fw = lend(state, vmid, page=20, pages=2)
    state.set_demand_paging(HLOS, m.SetDemandPagingRequest(vmid, ((RAM, 0x10000),)))
    state.set_address_layout(HLOS, m.SetAddressLayoutRequest(vmid, m.RANGE_IMAGE, RAM, 0x4000))
    state.config_image(HLOS, m.ConfigImageRequest(vmid, 0, lend(state, vmid), 0, 0, 0, 0x100))
    state.set_firmware_mem(HLOS, m.SetFirmwareMemRequest(vmid, 0, fw, 0x1000, 0x1000))
    fails(RmError.ARGUMENT_INVALID, state.set_firmware_mem, HLOS,
          m.SetFirmwareMemRequest(vmid, 0, fw, 0x1000, 0x1001))
    state.init(HLOS, vmid)
    state.set_boot_context(HLOS, m.SetBootContextRequest(vmid, m.REG_SET_X, 31, 5))
    fails(RmError.ARGUMENT_INVALID, state.set_boot_context, HLOS,
          m.SetBootContextRequest(vmid, m.REG_SET_X, 32, 5))
    fails(RmError.ARGUMENT_INVALID, state.set_boot_context, HLOS,
          m.SetBootContextRequest(vmid, m.REG_SET_SP_EL1, 1, 5))
    fails(RmError.VM_STATE, state.set_demand_paging, HLOS, m.SetDemandPagingRequest(vmid))
    vm = state.vms[vmid]
    assert vm.boot_context == {(0, 31): 5} and vm.firmware.mem_handle == fw
    assert vm.demand_paging == ((RAM, 0x10000),) and vm.address_layout == {0: (RAM, 0x4000)}


def test_hyp_resources_come_from_the_hook():
    entry = m.HypResource(m.RES_VCPU, resource_label=0, cap_id=0x1234, virq=64)
    state, _ = make()
    state.hooks.hyp_resources = lambda vm: [entry]
    vmid, _ = state.alloc_vmid(HLOS, 0)
    assert state.get_hyp_resources(HLOS, vmid) == [entry]


# --- memory parcels ---------------------------------------------------------------------------
def test_parcel_checks():
    state, _ = make()
    a, _ = state.alloc_vmid(HLOS, 0)
    b, _ = state.alloc_vmid(HLOS, 0)
    lend(state, a, page=0, pages=4)
    P = m.MemParcelRequest
    cases = [
        (RmError.MEM_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM + 3 * PAGE, PAGE),))),
        (RmError.MEM_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM + 8 * PAGE, PAGE),
                                                               (RAM + 8 * PAGE, PAGE)))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM + 1, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM, 0),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((1 << 44, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=(), sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=())),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7), (b, 4)),
                                                   sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 2),), sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((0x99, 7),),
                                                   sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7), (HLOS, 7)),
                                                   sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_SHARE, P(acl=((b, 7),),
                                                    sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(mem_type=1, acl=((b, 5),),
                                                   sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(mem_type=2, acl=((b, 7),),
                                                   sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_DONATE, P(acl=((a, 7), (b, 7)),
                                                     sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.DENIED, m.TRANS_DONATE, P(acl=((b, 6),), sgl=((RAM + 8 * PAGE, PAGE),))),
        (RmError.VMID_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM + 8 * PAGE, PAGE),),
                                               attrs=((0, a),))),
        (RmError.ARGUMENT_INVALID, m.TRANS_LEND, P(acl=((b, 7),), sgl=((RAM + 8 * PAGE, PAGE),),
                                                   attrs=((1, b),))),
    ]
    for error, trans, req in cases:
        before = state.snapshot()
        fails(error, state.create_parcel, HLOS, trans, req)
        assert state.snapshot() == before, req
    fails(RmError.VMID_INVALID, state.create_parcel, 0x99, m.TRANS_LEND,
          P(acl=((b, 7),), sgl=((RAM + 8 * PAGE, PAGE),)))


def test_parcels_per_owner_are_limited():
    state, _ = make()
    a, _ = state.alloc_vmid(HLOS, 0)
    for i in range(64):
        lend(state, a, page=i, pages=1)
    fails(RmError.DENIED, lend, state, a, 100, 1)


def test_append_until_end():
    state, rec = make()
    a, _ = state.alloc_vmid(HLOS, 0)
    h = lend(state, a, page=0, pages=1, flags=m.PARCEL_FLAG_APPEND)
    assert "on_lend" not in rec.names()                       # not complete yet
    fails(RmError.HANDLE_INVALID, state.append, HLOS, m.MemAppendRequest(h + 1, 0,
                                                                         ((RAM, PAGE),)))
    fails(RmError.DENIED, state.append, a, m.MemAppendRequest(h, 0, ((RAM + PAGE, PAGE),)))
    fails(RmError.ARGUMENT_INVALID, state.append, HLOS, m.MemAppendRequest(h, 0, ()))
    fails(RmError.MEM_INVALID, state.append, HLOS, m.MemAppendRequest(h, 0, ((RAM, PAGE),)))
    state.append(HLOS, m.MemAppendRequest(h, 0, ((RAM + PAGE, PAGE),)))
    state.append(HLOS, m.MemAppendRequest(h, m.APPEND_FLAG_END, ((RAM + 2 * PAGE, PAGE),)))
    assert rec.names()[-3:] == ["on_append", "on_append", "on_lend"]
    assert state.parcels.parcels[h].size == 3 * PAGE
    fails(RmError.DENIED, state.append, HLOS, m.MemAppendRequest(h, 1, ((RAM + 9 * PAGE,
                                                                          PAGE),)))
    state.parcels.check_invariants()


def test_reclaim_rules():
    state, _ = make()
    vmid, h = ready_vm(state)
    fails(RmError.HANDLE_INVALID, state.reclaim, HLOS, m.MemReclaimRequest(h + 100))
    fails(RmError.DENIED, state.reclaim, vmid, m.MemReclaimRequest(h))
    state.start(HLOS, vmid)
    fails(RmError.MEM_INUSE, state.reclaim, HLOS, m.MemReclaimRequest(h))
    fails(RmError.MEM_INVALID, lend, state, vmid, 0, 1)        # still lent: no double lend
    state.stop(HLOS, m.VmStopRequest(vmid, 1))
    state.reclaim(HLOS, m.MemReclaimRequest(h))
    lend(state, vmid, 0, 1)                                   # free again


def test_donation_moves_pages_to_the_recipient_when_it_starts():
    state, _ = make()
    vmid, _ = ready_vm(state)
    d = lend(state, vmid, page=32, pages=2, trans=m.TRANS_DONATE)
    state.start(HLOS, vmid)
    assert d not in state.parcels.parcels
    other, _ = state.alloc_vmid(HLOS, 0)
    fails(RmError.MEM_INVALID, lend, state, other, 32, 1)      # no longer the primary's
    h = lend(state, other, 32, 1, caller=vmid)                # the recipient's to lend
    assert state.parcels.parcels[h].owner == vmid
    state.stop(HLOS, m.VmStopRequest(vmid, 1))
    state.reset(HLOS, vmid)
    state.run_deferred()                                      # destroyed: pages come back
    assert h not in state.parcels.parcels
    lend(state, other, 32, 2)
    state.parcels.check_invariants()


def test_mem_notifications_when_enabled():
    state, rec = make()
    state.mem_notifications = True
    vmid, h = ready_vm(state)
    state.start(HLOS, vmid)
    state.stop(HLOS, m.VmStopRequest(vmid, 1))
    mem = [n for _, n in rec.notes if isinstance(n, m.MemOwnerNotification)]
    assert mem == [m.MemAcceptedNotification(h, vmid), m.MemReleasedNotification(h, vmid)]


def test_lending_to_a_running_vm_is_accepted_at_once():
    state, _ = make()
    vmid, _ = ready_vm(state)
    state.start(HLOS, vmid)
    h = lend(state, vmid, page=40, pages=1)
    assert state.parcels.parcels[h].accepted == {vmid}


# --- property: random parcel traffic across several VMs ---------------------------------------
CALLERS = [HLOS, 0x80, 0x81, 0x82]
rare = st.integers(0, 9).map(lambda n: n == 0)          # True one time in ten
caller = st.sampled_from([HLOS, HLOS, HLOS] + CALLERS)       # mostly the one owning RAM
ranges = st.lists(st.tuples(st.integers(0, 15), st.sampled_from([1, 1, 2, 3, 0]), rare),
                  min_size=1, max_size=2)
create = st.tuples(st.just("create"), caller,
                   st.sampled_from([m.TRANS_LEND, m.TRANS_SHARE, m.TRANS_DONATE]),
                   st.lists(st.sampled_from(CALLERS), min_size=1, max_size=3, unique=True),
                   rare, st.sampled_from([7, 7, 7, 6, 5, 4, 2]), ranges, st.booleans())
ops = st.one_of(
    create, create, create,
    st.tuples(st.just("append"), caller, st.integers(0, 8), ranges, st.booleans()),
    st.tuples(st.just("reclaim"), caller, st.integers(0, 8)),
    st.tuples(st.just("run"), st.sampled_from(CALLERS[1:])),
    st.tuples(st.just("stop"), st.sampled_from(CALLERS[1:])),
    st.tuples(st.just("reset"), st.sampled_from(CALLERS[1:])),
)


def sgl(spec):
    return tuple((RAM + page * PAGE + (1 if odd else 0), n * PAGE) for page, n, odd in spec)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, min_size=5, max_size=40))
def test_random_parcel_traffic_keeps_the_invariants(sequence):
    state, _ = make()
    for _ in CALLERS[1:]:
        state.alloc_vmid(HLOS, 0)
    handles = []
    for op in sequence:
        kind = op[0]
        before = state.snapshot()
        accepted_before = {h: set(p.accepted) for h, p in state.parcels.parcels.items()}
        try:
            if kind == "create":
                _, caller, trans, others, odd_acl, rights, spec, more = op
                with_owner = (trans == m.TRANS_SHARE) != odd_acl
                acl = [v for v in others if v != caller] + ([caller] if with_owner else [])
                req = m.MemParcelRequest(flags=m.PARCEL_FLAG_APPEND if more else 0,
                                         acl=tuple((v, rights) for v in acl), sgl=sgl(spec))
                handles.append(state.create_parcel(caller, trans, req))
            elif kind == "append":
                _, caller, i, spec, end = op
                h = handles[i % len(handles)] if handles else 0
                state.append(caller, m.MemAppendRequest(h, int(end), sgl(spec)))
            elif kind == "reclaim":
                _, caller, i = op
                h = handles[i % len(handles)] if handles else 0
                state.reclaim(caller, m.MemReclaimRequest(h))
                assert not accepted_before[h], "reclaimed while a borrower had it"
            elif kind == "run":
                vm = state.vms[op[1]]
                if vm.status in (VmStatus.LOAD, VmStatus.RESET, VmStatus.EXITED):
                    vm.status = VmStatus.READY             # skip image loading here
                state.start(HLOS, op[1])
            elif kind == "stop":
                state.stop(HLOS, m.VmStopRequest(op[1], 1))
            else:
                state.reset(HLOS, op[1])
                state.run_deferred()
        except RmFailure:
            if kind != "run":                       # a failing start may go INIT_FAILED
                assert state.snapshot() == before, op
        state.parcels.check_invariants()
        for p in state.parcels.parcels.values():    # accepted only by running borrowers
            for vmid in p.accepted:
                assert state.vms[vmid].status == VmStatus.RUNNING
