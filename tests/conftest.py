import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qemu_bridge.cli"]


def gunyah_sim(*args, timeout=300, **kw):
    """Run the CLI as a user would; returns the CompletedProcess (text)."""
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)


def qemu_processes() -> list[int]:
    """PIDs of QEMU processes started by gunyah-sim (their RAM file names say so)."""
    out = subprocess.run(["pgrep", "-f", "qemu-system-aarch64.*gunyah-sim-"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def leftovers() -> list[str]:
    found = [str(p) for p in Path("/dev/shm").glob("gunyah-sim-*")]
    tmp = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    found += [str(p) for p in tmp.glob("gunyah-sim-*")]
    return found


@pytest.fixture
def no_leftovers():
    """Asserts that a test left no QEMU process, shared RAM file or temp dir behind."""
    before = set(leftovers())
    yield
    assert qemu_processes() == [], "a QEMU process outlived the run"
    assert set(leftovers()) - before == set(), "a temp file or directory was left behind"
