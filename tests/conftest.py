import subprocess
import sys
from pathlib import Path

import pytest

from qemu_bridge.machine import ram_file_prefix

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qemu_bridge.cli"]


def gunyah_sim(*args, timeout=300, **kw):
    """Run the CLI as a user would; returns the CompletedProcess (text)."""
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)


def qemu_processes(marker: str = "gunyah-sim-") -> list[int]:
    """PIDs of QEMU processes whose command line contains `marker` (their socket paths)."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system-aarch64.*{marker}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def no_leftovers(tmp_path_factory, monkeypatch):
    """Asserts that a test left no QEMU process, shared RAM file or temp dir behind.

    Runs get a private XDG_RUNTIME_DIR (gunyah-sim puts its per-run directory there), so that
    other gunyah-sim runs on the same machine cannot be mistaken for this test's leftovers.
    """
    rundir = tmp_path_factory.mktemp("rundir")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(rundir))
    yield rundir
    assert qemu_processes(str(rundir)) == [], "a QEMU process outlived the run"
    assert list(rundir.iterdir()) == [], "a temp file or directory was left behind"
    ours = list(Path("/dev/shm").glob(ram_file_prefix(rundir) + "*"))
    assert ours == [], "a shared RAM file was left behind"
