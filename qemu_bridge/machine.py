"""The QEMU process: command line, private temp dir, sockets, shared RAM file, teardown.

Every resource a run creates lives in one private directory (sockets, DTB, initramfs) or is
unlinked as soon as both sides hold it (the shared RAM file), so no exit path leaves files
behind.  QEMU gets PR_SET_PDEATHSIG, so it cannot outlive the Python process either.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
from qemu.qmp.legacy import QEMUMonitorProtocol

from .gdbremote import GdbRemote

log = logging.getLogger("gunyah_sim.qemu")

QEMU = "qemu-system-aarch64"


class QemuError(RuntimeError):
    """QEMU could not be started, or died."""


@dataclass
class MachineConfig:
    smp: int = 1
    memory_mb: int = 512
    cpu: str = "cortex-a57"
    shared_ram: bool = True          # guest RAM in a shared file that Python maps (shm doorbell)
    extra_args: list[str] = field(default_factory=list)

    def machine_option(self, extra: str = "") -> str:
        opt = "virt,virtualization=on,gic-version=3"
        if self.shared_ram:
            opt += ",memory-backend=ram"
        return opt + extra

    def base_args(self) -> list[str]:
        return [QEMU, "-machine", self.machine_option(), "-cpu", self.cpu,
                "-smp", str(self.smp), "-m", f"{self.memory_mb}M"]


def _pdeathsig() -> None:
    """Runs in the child before exec: die with the parent; own process group."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG


class QemuMachine:
    def __init__(self, config: MachineConfig, workdir: Path):
        if shutil.which(QEMU) is None:
            raise QemuError(f"{QEMU} not found: run scripts/setup (Debian qemu-system-arm)")
        self.config = config
        self.workdir = workdir
        self.qmp_path = str(workdir / "qmp.sock")
        self.gdb_path = str(workdir / "gdb.sock")
        self.ram_path = f"/dev/shm/{ram_file_prefix(workdir.parent)}{os.getpid()}-{workdir.name}"
        self.child: pexpect.spawn | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.gdb: GdbRemote | None = None
        self.ram: mmap.mmap | None = None
        self.command: list[str] = []

    # --- the machine's own DT -----------------------------------------------------------------
    def dump_dtb(self) -> bytes:
        """The DTB QEMU generates for this machine (-machine dumpdtb=)."""
        path = self.workdir / "qemu.dtb"
        cfg = self.config
        cmd = [QEMU, "-machine", f"virt,virtualization=on,gic-version=3,dumpdtb={path}",
               "-cpu", cfg.cpu, "-smp", str(cfg.smp), "-m", f"{cfg.memory_mb}M",
               "-display", "none", "-nodefaults"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if not path.exists():
            raise QemuError(f"QEMU could not dump its DTB ({shlex.join(cmd)}):\n{proc.stderr}")
        return path.read_bytes()

    # --- start and stop -----------------------------------------------------------------------
    def start(self, *, shim: Path, dtb: Path, initrd: Path | None,
              loads: list[tuple[Path, int]], logfile=None) -> None:
        cfg = self.config
        cmd = cfg.base_args()
        if cfg.shared_ram:
            cmd += ["-object", f"memory-backend-file,id=ram,size={cfg.memory_mb}M,"
                               f"mem-path={self.ram_path},share=on"]
        cmd += ["-kernel", str(shim), "-dtb", str(dtb)]
        if initrd is not None:
            cmd += ["-initrd", str(initrd)]
        for path, addr in loads:
            cmd += ["-device", f"loader,file={path},addr={addr:#x},force-raw=on"]
        cmd += ["-display", "none", "-nodefaults", "-no-user-config", "-serial", "stdio",
                "-monitor", "none", "-no-reboot", "-S",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-chardev", f"socket,id=gdb0,path={self.gdb_path},server=on,wait=off",
                "-gdb", "chardev:gdb0"]
        cmd += cfg.extra_args
        self.command = cmd
        log.debug("starting %s", shlex.join(cmd))
        self.child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace",
                                   timeout=None, echo=False, preexec_fn=_pdeathsig,
                                   dimensions=(50, 200))
        if logfile is not None:
            self.child.logfile_read = logfile
        self._wait_for_sockets()
        try:
            self.qmp = QEMUMonitorProtocol(self.qmp_path)
            self.qmp.connect()
            self.gdb = GdbRemote(self.gdb_path)
            self.gdb.read_target_description()
        except Exception as err:              # QEMU died while starting (e.g. a bad load)
            time.sleep(0.1)
            output = self._drain()
            raise QemuError(f"QEMU failed while starting ({err.__class__.__name__}):\n"
                            f"{output.strip()}\ncommand: {shlex.join(self.command)}") from None
        if cfg.shared_ram:
            fd = os.open(self.ram_path, os.O_RDWR)
            try:
                self.ram = mmap.mmap(fd, cfg.memory_mb << 20, mmap.MAP_SHARED)
            finally:
                os.close(fd)
            os.unlink(self.ram_path)          # both sides hold it now; nothing left on disk

    def _wait_for_sockets(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.qmp_path) and os.path.exists(self.gdb_path)):
            if not self.child.isalive():
                output = self._drain()
                raise QemuError(f"QEMU exited at start (status {self.child.exitstatus}):\n"
                                f"{output.strip()}\ncommand: {shlex.join(self.command)}")
            if time.monotonic() > deadline:
                raise QemuError("QEMU did not open its QMP and gdb sockets within "
                                f"{timeout:.0f} s")
            time.sleep(0.01)

    def _drain(self) -> str:
        try:
            return self.child.read_nonblocking(65536, timeout=0.2)
        except (pexpect.EOF, pexpect.TIMEOUT, OSError):
            return self.child.before or ""

    def resume(self) -> None:
        self.qmp.cmd("cont")

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def exit_status(self) -> int | None:
        if self.child is None or self.child.isalive():
            return None
        return self.child.exitstatus if self.child.exitstatus is not None else \
            -(self.child.signalstatus or 0)

    def kill(self) -> None:
        """For tests and fault injection: SIGKILL QEMU as if it crashed."""
        if self.child is not None and self.child.pid:
            os.kill(self.child.pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Stop QEMU (politely, then not) and release every resource.  Idempotent."""
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        if self.qmp is not None:
            try:
                if self.alive():
                    self.qmp.cmd("quit")
            except Exception:                  # QEMU may already be gone
                pass
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.child is not None:
            deadline = time.monotonic() + 2.0
            while self.child.isalive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.child.isalive():
                self.child.kill(signal.SIGKILL)
            try:
                self.child.close(force=True)
            except Exception:
                pass
        if self.ram is not None:
            try:
                self.ram.close()
            except BufferError:                # a view is still exported; the GC frees it
                pass
            self.ram = None
        if os.path.exists(self.ram_path):
            os.unlink(self.ram_path)


def ram_file_prefix(rundir: Path) -> str:
    """Shared RAM files of runs whose directories live in `rundir` start with this."""
    return f"gunyah-sim-{hashlib.sha1(str(rundir).encode()).hexdigest()[:8]}-"


def make_workdir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") if os.environ.get("XDG_RUNTIME_DIR") else None
    return Path(tempfile.mkdtemp(prefix="gunyah-sim-", dir=base))
