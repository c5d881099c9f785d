"""The VM runtime on the fake backend: scheduling, traps, the virtual GIC (no QEMU)."""
from gunyah_el2.backend import EC_HVC64, FakeBackend, VcpuExit
from gunyah_el2.hypervisor import Hypervisor
from gunyah_el2.vgic import GICD_BASE, GICR_BASE, SGI_FRAME, VGic
from gunyah_el2.vm import EnterVcpu, ReturnToIdle, WriteEl1

VM_PA = 0x5000_0000


def make_hv(reserved=(1,)):
    hv = Hypervisor(FakeBackend())
    hv.vms.configure(list(reserved), (0x5F00_0000, 0x10_0000), (0x4000_0000, 512 << 20))
    return hv


def idle(cpu):
    return VcpuExit(cpu=cpu, esr=0, elr=0, spsr=0, x=(0,) * 31)


def dabt(cpu, ipa, srt, write, size_log2=2, x=None):
    iss = (1 << 24) | (size_log2 << 22) | (srt << 16) | (int(write) << 6)
    return VcpuExit(cpu=cpu, esr=(0x24 << 26) | iss, elr=0x8000_1000, spsr=0x3C5,
                    x=tuple(x or (0,) * 31), far=ipa & 0xFFF, hpfar=(ipa >> 12) << 4)


def test_a_failing_vm_exit_handler_stops_only_that_vm():
    """Fake backend: a bug while handling a VM's trap stops the VM and idles its CPU."""
    hv = make_hv()
    hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000, x0=0)
    assert any(isinstance(a, EnterVcpu) for a in hv.handle_idle(idle(1)).actions)

    def broken(exit_):
        raise RuntimeError("bug")
    hv.vms._call = broken
    trap = VcpuExit(cpu=1, esr=EC_HVC64 << 26, elr=0x8000_0004, spsr=0x3C5, x=(0x80000000,) * 31)
    reply = hv.handle_exit(trap)
    assert reply.actions == [ReturnToIdle()]
    assert hv.vms.vms[0x80].state == "exited"
    assert hv.events[-1]["event"] == "vm_exit"
    # the primary is unaffected
    primary = VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0x4040_0000, spsr=0x3C5,
                       x=(0x80000000,) + (0,) * 30)
    assert hv.handle_exit(primary).x[0] == 0x10001



def test_vcpus_wait_for_a_cpu_and_the_vm_sees_its_own_stage2():
    hv = make_hv(reserved=(1,))
    vm = hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000, x0=7,
                       ncpus=2)
    assert vm.s2.translate(0x8000_1234) == VM_PA + 0x1234
    assert vm.s2.translate(0x4000_0000) is None               # the primary's RAM: not mapped
    assert hv.vms.primary_s2.translate(0x4040_0000) == 0x4040_0000
    reply = hv.handle_idle(idle(1))
    enter = next(a for a in reply.actions if isinstance(a, EnterVcpu))
    assert reply.pc == 0x8000_0000 and reply.x[0] == 7
    assert enter.context["vttbr_el2"] == vm.s2.vttbr and enter.context["vmpidr_el2"] & 0xFF == 0
    # vCPU 1 started by PSCI CPU_ON waits: the only reserved CPU is busy
    on = VcpuExit(cpu=1, esr=EC_HVC64 << 26, elr=0x8000_0104, spsr=0x3C5,
                  x=(0xC4000003, 1, 0x8000_2000, 9) + (0,) * 27)
    assert hv.handle_exit(on).x[0] == 0
    assert [v.index for v in hv.vms.runnable] == [1]


def test_lend_unmaps_from_the_primary_and_reclaim_maps_back():
    hv = make_hv()
    hv.vms.primary_unmap([(0x4800_0000, 0x2000)])
    assert hv.vms.primary_s2.translate(0x4800_1000) is None
    assert hv.vms.primary_s2.translate(0x4800_2000) == 0x4800_2000
    hv.vms.primary_map([(0x4800_0000, 0x2000)])
    assert hv.vms.primary_s2.translate(0x4800_1000) == 0x4800_1000


def test_console_and_gic_mmio_emulation():
    hv = make_hv()
    hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000, x0=0)
    hv.handle_idle(idle(1))
    lines = []
    hv.vms.console_sink = lambda vmid, line: lines.append((vmid, line))
    for ch in b"hi\n":
        x = [0] * 31
        x[3] = ch
        assert hv.handle_exit(dabt(1, 0x0900_0000, 3, True, x=x)).pc == 0x8000_1004
    assert lines == [(0x80, "hi")]
    assert hv.handle_exit(dabt(1, 0x0900_0018, 5, False)).x[5] & 0x80        # FR: TX empty
    assert hv.handle_exit(dabt(1, GICD_BASE + 0xFFE8, 2, False)).x[2] == 0x3B  # GICv3
    assert hv.handle_exit(dabt(1, GICR_BASE + 0x8, 4, False, 3)).x[4] & 0x10   # Last frame
    hv.handle_exit(dabt(1, GICR_BASE + SGI_FRAME + 0x100, 1, True, x=(0, 1 << 27) + (0,) * 29))
    assert hv.vms.vms[0x80].vgic.ppi_enabled(0, 27)
    # an access outside its memory and devices: an abort delivered to the VM's EL1
    reply = hv.handle_exit(dabt(1, 0x4000_0000, 0, False))
    assert any(isinstance(a, WriteEl1) and (a.values["esr_el1"] >> 26) == 0x25
               for a in reply.actions)


def test_vgic_set_clear_pairs_and_handshakes():
    g = VGic(2)
    g.write(GICD_BASE + 0x104, 4, 0b101)             # ISENABLER1: SPIs 32 and 34
    g.write(GICD_BASE + 0x184, 4, 0b001)             # ICENABLER1: SPI 32 off again
    assert g.read(GICD_BASE + 0x104, 4) == 0b100
    assert g.read(GICR_BASE + 0x14, 4) & 0b100       # asleep until woken
    g.write(GICR_BASE + 0x14, 4, 0)
    assert g.read(GICR_BASE + 0x14, 4) == 0
    assert g.read(GICR_BASE + 0x2_0000 + 0x8, 8) == (1 << 32) | (1 << 8) | 0x10
    g.write(GICD_BASE + 0x6000 + 8 * 40, 8, 0x1_0000_0001)
    assert g.read(GICD_BASE + 0x6000 + 8 * 40, 8) == 0x1_0000_0001


def test_get_hyp_resources_lists_the_vms_vcpus_as_primary_capabilities():
    from gunyah_el2 import vm_rm
    from gunyah_el2.rm import messages as m
    hv = make_hv()
    vm_rm.attach(hv)
    hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000, x0=0, ncpus=2)
    state = hv.primary.rm.state
    state.vms[0x80] = type("Vm", (), {"vmid": 0x80, "owner": 3})()
    entries = state.hooks.hyp_resources(state.vms[0x80])
    assert [(e.type, e.partner_vmid, e.resource_handle) for e in entries] == [
        (vm_rm.RESOURCE_VCPU, 0x80, 0), (vm_rm.RESOURCE_VCPU, 0x80, 1)]
    caps = [hv.primary.cspace[e.cap_id] for e in entries]
    assert all(isinstance(c, vm_rm.VcpuCap) for c in caps)
    assert [e.cap_id for e in state.hooks.hyp_resources(state.vms[0x80])] == \
        [e.cap_id for e in entries]                              # stable across calls
    # a vCPU capability is the wrong object for a message-queue call
    from gunyah_el2.backend import EC_HVC64, VcpuExit
    from gunyah_el2.errors import GunyahError
    trap = VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0x4040_0000, spsr=0x3C5,
                    x=(0xC600801B, entries[0].cap_id, 1, 0x4100_0000, 0) + (0,) * 26)
    assert hv.handle_exit(trap).x[0] == GunyahError.CSPACE_WRONG_OBJ_TYPE
    assert len(m.HypResourcesReply(tuple(entries)).encode()) == 4 + 44 * 2


def test_sgis_between_vcpus_go_through_a_kick_and_a_list_register():
    from gunyah_el2.vm import Kick
    hv = make_hv(reserved=(1, 2))
    hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000, x0=0, ncpus=2)
    hv.handle_idle(idle(1))
    hv.handle_idle(idle(2))
    on = VcpuExit(cpu=1, esr=EC_HVC64 << 26, elr=0x8000_0104, spsr=0x3C5,
                  x=(0xC4000003, 1, 0x8000_2000, 0) + (0,) * 27)
    assert hv.handle_exit(on).x[0] == 0 and hv.vms.take_outbox()[0][0] == 2
    # vCPU 0 writes ICC_SGI1R_EL1 = SGI 3 to vCPU 1 (x5); the trap is EC 0x18
    iss = (3 << 20) | (5 << 17) | (0 << 14) | (12 << 10) | (5 << 5) | (11 << 1)
    x = [0] * 31
    x[5] = (3 << 24) | 0b10
    reply = hv.handle_exit(VcpuExit(cpu=1, esr=(0x18 << 26) | iss, elr=0x8000_3000,
                                    spsr=0x3C5, x=tuple(x)))
    assert reply.pc == 0x8000_3004 and Kick(2) in reply.actions
    # vCPU 1 traps on the kick with list registers 1..3 free: SGI 3 goes into LR1
    kicked = VcpuExit(cpu=2, esr=0, elr=0x8000_5000, spsr=0x3C5, x=(0,) * 31,
                      intid=32 + 210, el1={"ich_elrsr_el2": 0b1110})
    values = next(a.values for a in hv.handle_irq(kicked).actions if isinstance(a, WriteEl1))
    assert values["ich_lr1_el2"] & 0xFFFF_FFFF == 3 and values["ich_lr1_el2"] >> 62 == 1
    assert not hv.vms.running[2].pending_sgis
