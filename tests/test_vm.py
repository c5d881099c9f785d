"""Secondary VMs end to end: a VM really runs on a reserved CPU in its own stage-2 space."""
import re

import pytest

from guest.build import build_payload
from gunyah_el2 import capabilities
from qemu_bridge.conformance import parse_tap
from qemu_bridge.session import RunOptions, run

pytestmark = pytest.mark.qemu

VM_PA = 0x5000_0000


@pytest.mark.parametrize("transport", ["shm", "gdb"])
def test_bare_metal_vm_runs_isolated_and_exits(transport, tmp_path, no_leftovers):
    """Started straight from the hypervisor (no RM): its console, its faults, its exit."""
    def start_vm(hv):
        hv.vms.create(0x80, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000,
                      x0=0x8010_0000)
        hv.vms.on_exit = lambda vm: hv.raise_spi(capabilities.RM_RX.spi)   # async path

    log = tmp_path / "console.log"
    result = run(RunOptions(kernel=build_payload("suite_vmhost_wait"), bare_metal=True,
                            vm_cpus=1, timeout=120, transport=transport, console_log=log,
                            quiet=True, vm_console_dir=tmp_path / "vms",
                            extra_loads=[(build_payload("vm_hello"), VM_PA)],
                            on_hypervisor=start_vm))
    assert result.ok, result.failure_report()
    vm_lines = (tmp_path / "vms" / "vm128.log").read_text()
    cases, plan, _ = parse_tap(vm_lines)
    assert plan == len(cases) == 9 and all(c.passed for c in cases), vm_lines
    assert "VM-HELLO-DONE" in vm_lines
    events = [e["event"] for e in result.events]
    assert events.count("vm_fault") == 2 and "vm_exit" in events
    host_cases, _, _ = parse_tap(log.read_text().replace("[vm128]", "#"))
    assert [c.passed for c in host_cases] == [True]      # the primary got its interrupt


LINUX_VM_PA, LINUX_VM_SIZE = capabilities.LINUX_VM_MEMORY
DTB_OFFSET, INITRD_OFFSET = 64 << 20, 65 << 20


@pytest.mark.parametrize("ncpus", [1, 2])
def test_debian_linux_boots_as_a_secondary_vm_started_through_the_rm(ncpus, tmp_path,
                                                                      no_leftovers):
    """A bare-metal VMM (suite_vmlinux.c) lends 128 MiB holding Debian's kernel, a DTB and an
    initramfs, and starts the VM through the RM.  The kernel boots as a VM (virtual GIC,
    timer and, with 2 vCPUs, SGIs between them, from the hypervisor) to a marker printed by
    its user space and powers off; the primary keeps running and gets VM_EXITED."""
    from pathlib import Path
    from dts.generate import linux_vm_dtb
    from guest import build
    from gunyah_el2.vm import DEFAULT_IPA_BASE
    initrd = build.build_run_initramfs(build.build_base_initramfs(), tmp_path / "vm.cpio",
                                       command=None, token="vm",
                                       overlays=[Path(build.GUEST_DIR) / "vm"])
    start = DEFAULT_IPA_BASE + INITRD_OFFSET
    dtb = tmp_path / "vm.dtb"
    dtb.write_bytes(linux_vm_dtb(DEFAULT_IPA_BASE, LINUX_VM_SIZE,
                                 (start, start + initrd.stat().st_size),
                                 "earlycon=pl011,0x9000000 keep_bootcon quiet nokaslr "
                                 "rdinit=/init panic=-1", ncpus=ncpus))
    log = tmp_path / "console.log"
    result = run(RunOptions(kernel=build_payload("suite_vmlinux"), bare_metal=True,
                            vm_cpus=ncpus, timeout=240, quiet=True, console_log=log,
                            vm_console_dir=tmp_path / "vms",
                            extra_loads=[(build.default_kernel(), LINUX_VM_PA),
                                         (dtb, LINUX_VM_PA + DTB_OFFSET),
                                         (initrd, LINUX_VM_PA + INITRD_OFFSET)]))
    assert result.ok, result.failure_report()
    vm_logs = list((tmp_path / "vms").glob("vm*.log"))
    assert len(vm_logs) == 1
    console = vm_logs[0].read_text()
    assert f"GSIM-VM-LINUX-BOOTED cpus={ncpus} " in console, console[-3000:]
    assert "Booting Linux on physical CPU 0x0000000000" in console   # its vCPU's MPIDR
    assert [e["reason"] for e in result.events if e["event"] == "vm_exit"] == ["powered off"]
    cases, plan, _ = parse_tap(re.sub(r"(?m)^\[vm\d+\] .*\n?", "", log.read_text()))
    assert plan == len(cases) >= 7 and all(c.passed for c in cases), [c.name for c in cases]


def test_two_vcpus_time_slice_one_reserved_cpu(tmp_path, no_leftovers):
    """vCPU 0 waits (without trapping) for vCPU 1, which has no CPU of its own: only a time
    slice that switches vCPU 0 out (EL1 state saved, restored later) lets the VM finish."""
    from dts.generate import vm_dtb
    from gunyah_el2.vm import DEFAULT_IPA_BASE
    dtb = tmp_path / "vm.dtb"
    dtb.write_bytes(vm_dtb(2, DEFAULT_IPA_BASE))

    def start_vm(hv):
        hv.vms.create(0x81, [(0x8000_0000, VM_PA, 0x20_0000)], entry=0x8000_0000,
                      x0=0x8010_0000, ncpus=2)
        hv.vms.on_exit = lambda vm: hv.raise_spi(capabilities.RM_RX.spi)

    result = run(RunOptions(kernel=build_payload("suite_vmhost_wait"), bare_metal=True,
                            vm_cpus=1, timeout=120, quiet=True, vm_console_dir=tmp_path / "vms",
                            extra_loads=[(build_payload("vm_hello"), VM_PA),
                                         (dtb, VM_PA + 0x10_0000)],
                            on_hypervisor=start_vm))
    assert result.ok, result.failure_report()
    cases, plan, _ = parse_tap((tmp_path / "vms" / "vm129.log").read_text())
    assert plan == len(cases) and all(c.passed for c in cases), [c.name for c in cases]
    assert any("second vCPU ran" in c.name for c in cases)
    assert any(e["event"] == "vcpu_preempted" and e["vcpu"] == 0 for e in result.events)

