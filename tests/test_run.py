"""End to end: boot the real Debian arm64 kernel on QEMU under the Python EL2 service."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLI, REPO, gunyah_sim, qemu_processes

pytestmark = pytest.mark.qemu


def test_default_guest_boots_and_exits_zero(no_leftovers):
    p = gunyah_sim("run")
    assert p.returncode == 0, p.stderr
    assert "Linux" in p.stdout and "aarch64" in p.stdout       # uname -a of the guest
    assert "Run /init as init process" in p.stdout


@pytest.mark.parametrize("transport", ["shm", "gdb"])
def test_smp2_reports_two_cpus_on_both_transports(transport, tmp_path, no_leftovers):
    trace = tmp_path / "trace.jsonl"
    p = gunyah_sim("run", "--smp", "2", "--transport", transport, "--trace", str(trace),
                   "--exec", "uname -m; nproc")
    assert p.returncode == 0, p.stderr
    lines = [l.strip() for l in p.stdout.splitlines()]
    assert "aarch64" in lines and "2" in lines
    records = [json.loads(l) for l in trace.read_text().splitlines()]
    calls = [r.get("call") for r in records]
    # the secondary CPU was started through our PSCI path and then trapped on its own
    assert "psci_cpu_on" in calls and "psci_system_off" in calls
    assert any(r.get("cpu") == 1 for r in records if "call" in r)
    assert all(r["py_us"] > 0 for r in records if "call" in r)


def test_exec_status_is_the_exit_code(no_leftovers):
    p = gunyah_sim("run", "-q", "--exec", "echo hello-from-guest; exit 3")
    assert p.returncode == 3
    assert "hello-from-guest" not in p.stdout           # -q: the console is not streamed


def test_guest_panic_has_its_own_exit_code_and_report(no_leftovers):
    p = gunyah_sim("run", "--exec", "echo c > /proc/sysrq-trigger; sleep 30", "--timeout", "120")
    assert p.returncode == 121, p.stderr
    assert "guest kernel panic" in p.stderr
    assert "--- last console lines ---" in p.stderr and "--- last trapped calls ---" in p.stderr


def test_hang_gets_the_timeout_code(no_leftovers):
    p = gunyah_sim("run", "-q", "--exec", "sleep 600", "--timeout", "15")
    assert p.returncode == 124, p.stderr
    assert "timeout" in p.stderr
    assert "psci_" in p.stderr            # the last trapped calls are listed


def _start_and_wait_ready(extra=()):
    proc = subprocess.Popen([*CLI, "run", "--exec", "echo READY-FOR-TEST; sleep 600",
                             "--timeout", "200", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "READY-FOR-TEST" in line and "echo" not in line:
            break
        assert time.monotonic() < deadline
    return proc


def test_qemu_killed_mid_run_is_reported(no_leftovers):
    proc = _start_and_wait_ready()
    pids = qemu_processes(str(no_leftovers))
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 125, err
    assert "QEMU exited unexpectedly" in err


def test_ctrl_c_stops_everything(no_leftovers):
    proc = _start_and_wait_ready()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err


def test_overlay_dir_and_tar_and_dtb_out(tmp_path, no_leftovers):
    from guest.build import tar_bytes
    d = tmp_path / "ovl"
    (d / "usr" / "bin").mkdir(parents=True)
    (d / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho overlay-dir-ok\n")
    (d / "usr" / "bin" / "hello").chmod(0o755)
    tar = tmp_path / "ovl.tar"
    tar.write_bytes(tar_bytes({"etc/motd": b"overlay-tar-ok\n"}))
    dtb = tmp_path / "guest.dtb"
    p = gunyah_sim("run", "--overlay", str(d), "--overlay", str(tar), "--dtb-out", str(dtb),
                   "--exec", "hello; cat /etc/motd; ls /proc/device-tree/hypervisor")
    assert p.returncode == 0, p.stderr
    assert "overlay-dir-ok" in p.stdout and "overlay-tar-ok" in p.stdout
    assert "gunyah-resource-mgr@10" in p.stdout     # the guest sees the /hypervisor node
    assert dtb.read_bytes()[:4] == bytes.fromhex("d00dfeed")


def test_bad_usage_exit_code():
    assert gunyah_sim("run", "--smp", "0").returncode == 2
    assert gunyah_sim("run", "--kernel", "/nonexistent").returncode == 2
    assert gunyah_sim("frobnicate").returncode == 2


def test_qemu_start_failure_is_reported(no_leftovers):
    p = gunyah_sim("run", "--cpu", "no-such-cpu", "-q")
    assert p.returncode == 125
    assert "QEMU" in p.stderr


def test_interactive_shell(no_leftovers):
    """--shell hands the console to the user's terminal (here a pexpect pty)."""
    import pexpect
    child = pexpect.spawn(CLI[0], [*CLI[1:], "run", "--shell", "--timeout", "120"], cwd=REPO,
                          encoding="utf-8", timeout=120)
    try:
        child.expect(r"[#$] ")
        child.sendline("echo shell-$((6*7))")
        child.expect("shell-42")
        child.sendline("poweroff -f")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
