"""Secondary VMs end to end: a VM really runs on a reserved CPU in its own stage-2 space."""
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
