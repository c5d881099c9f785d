"""The `linux` conformance suite: Debian's kernel loads gsim_rmtest, which checks the RM."""
import pytest

from qemu_bridge.conformance import SUITES, parse_tap, run_suite
from qemu_bridge.linux_suite import extract_tap, module_command

CONSOLE = """\
[    1.608613] Run /init as init process\r
GSIM-INIT-READY-0123abcd\r
[    1.777018] gsim_rmtest: loading out-of-tree module taints kernel.\r
[    1.785878] gsim_rmtest: ok 1 - found the RM node (abi v17): tx capid 0x10 irq 17\r
[    1.787883] gsim_rmtest: not ok 2 - VM_GET_VMID answers the primary VM's VMID 3 (got -1)\r
[    1.787890] gsim_rmtest: # no reply: -110\r
[    1.787891] some_driver: ok 9 - not ours\r
/ # [    1.788142] gsim_rmtest: ok 3 - vendor hyp UID over the SMCCC conduit (smc)\r
[   12.788343] gsim_rmtest: 1..3\r
[   12.788350] gsim_rmtest: # 1 of 3 cases failed\r
GSIM-EXIT-0123abcd status=0\r
"""


def test_extract_tap_strips_prefix_and_printk_timestamps():
    tap = extract_tap(CONSOLE)
    assert tap.splitlines() == [
        "loading out-of-tree module taints kernel.",
        "ok 1 - found the RM node (abi v17): tx capid 0x10 irq 17",
        "not ok 2 - VM_GET_VMID answers the primary VM's VMID 3 (got -1)",
        "# no reply: -110",
        "ok 3 - vendor hyp UID over the SMCCC conduit (smc)",
        "1..3",
        "# 1 of 3 cases failed",
    ]
    cases, plan, bailed = parse_tap(tap)
    assert plan == 3 and not bailed
    assert [(c.name.split(" ")[0], c.passed) for c in cases] == [
        ("found", True), ("VM_GET_VMID", False), ("vendor", True)]
    assert cases[1].diagnostics == ["no reply: -110"]


def test_extract_tap_of_a_console_without_the_module_is_empty():
    assert extract_tap("[    0.000000] Booting Linux\nok 1 - from someone else\n") == ""
    assert parse_tap(extract_tap(""))[:2] == ([], None)


def test_module_command_raises_the_console_loglevel_first():
    assert module_command() == "echo 8 > /proc/sys/kernel/printk; insmod /gsim_rmtest.ko"
    assert module_command("bench=10").endswith("insmod /gsim_rmtest.ko bench=10")


@pytest.mark.qemu
@pytest.mark.parametrize("abi", ["v6", "v17"])
def test_linux_suite_passes(abi, no_leftovers):
    result = run_suite(SUITES["linux"], abi)
    failed = [f"{c.name}: {c.diagnostics}" for c in result.cases if not c.passed]
    assert result.problem is None, result.problem + "\n" + result.output[-3000:]
    assert failed == []
    assert len(result.cases) >= 10
    names = " | ".join(c.name for c in result.cases)
    for what in ("UID", "hyp_identify", "VM_GET_VMID", "VM_ALLOC_VMID", "VM_DEALLOC_VMID",
                 "MEM_LEND", "MEM_RECLAIM", "HANDLE_INVALID", "MEM_SHARE", "UNIMPLEMENTED",
                 "MSG_INVALID", "truncated header", "RX interrupts"):
        assert what in names, what


@pytest.mark.qemu
def test_linux_suite_detects_a_wrong_rm_answer(monkeypatch, no_leftovers):
    """Not a rubber stamp: an RM that reports the wrong VMID fails the VMID case."""
    from gunyah_el2.rm import state
    monkeypatch.setattr(state.RmState, "get_vmid", lambda self, caller: 7)
    result = run_suite(SUITES["linux"], "v17")
    failed = [c.name for c in result.cases if not c.passed]
    assert any("VM_GET_VMID" in name for name in failed), failed
    assert not result.passed
