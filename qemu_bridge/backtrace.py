"""Where was every vCPU?  For the failure report of a run that hung (124) or panicked (121).

Raw registers always (pc, lr, sp, fp and the exception level of each gdbstub thread, one per
vCPU, the hypervisor's reserved CPUs included); with the kernel's vmlinux also a symbolized
backtrace of each vCPU, got by driving gdb-multiarch through pygdbmi: the guest is stopped, gdb
attaches through a gdbproxy.GdbProxy (the run's own --gdb proxy when it has one and no user is
attached, otherwise a temporary one on a free loopback port), `info threads`, then `bt 20` in
each thread.  Everything is bounded by a deadline, so a report never hangs on gdb.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from . import gdbproxy
from .gdbremote import GdbError, GdbRemote

log = logging.getLogger("gunyah_sim.backtrace")

GDB = "gdb-multiarch"
DEPTH = 20
EL_NAMES = {0: "EL0", 1: "EL1", 2: "EL2 (shim)", 3: "EL3"}


def find_vmlinux(kernel: Path | None, explicit: Path | None = None) -> Path | None:
    """--vmlinux, else `vmlinux` next to the Image (what `gunyah-sim kernel build` writes)."""
    if explicit is not None:
        return explicit
    if kernel is not None:
        candidate = Path(kernel).parent / "vmlinux"
        if candidate.is_file():
            return candidate
    return None


def raw_registers(gdb: GdbRemote, reserved_cpus=()) -> list[str]:
    """One line per gdbstub thread (vCPU) from `g`: x0..x30, sp, pc (8 bytes each), cpsr."""
    lines = []
    with gdb.lock:
        for thread in gdb.threads():
            cpu = thread[1] - 1
            gdb.select_thread(thread, "g")
            regs = bytes.fromhex(gdb.request("g").decode())
            word = [int.from_bytes(regs[8 * i:8 * i + 8], "little") for i in range(33)]
            cpsr = int.from_bytes(regs[264:268], "little")
            el = EL_NAMES.get((cpsr >> 2) & 3, "?")
            note = " [reserved for VMs]" if cpu in reserved_cpus else ""
            lines.append(f"cpu{cpu}{note}: pc {word[32]:#018x} lr {word[30]:#018x} "
                         f"sp {word[31]:#018x} fp {word[29]:#018x} {el} cpsr {cpsr:#x}")
    return lines


def _mi(ctl, command: str, token: int, deadline: float) -> tuple[dict | None, str]:
    """Send one MI command; wait for its result record.  Returns (result, console text)."""
    ctl.write(f"{token}{command}", read_response=False)
    text = []
    while time.monotonic() < deadline:
        for r in ctl.get_gdb_response(timeout_sec=min(0.5, max(0.0, deadline - time.monotonic())),
                                      raise_error_on_timeout=False):
            if r.get("type") == "console" and isinstance(r.get("payload"), str):
                text.append(r["payload"])
            elif r.get("type") == "result" and r.get("token") == token:
                return r, "".join(text)
    return None, "".join(text)


def _cli(ctl, command: str, token: int, deadline: float) -> str:
    quoted = command.replace("\\", "\\\\").replace('"', '\\"')
    result, text = _mi(ctl, f'-interpreter-exec console "{quoted}"', token, deadline)
    if result is None:
        raise TimeoutError(f"gdb did not answer {command!r} in time")
    if result.get("message") == "error":
        raise GdbError(f"gdb: {command}: {(result.get('payload') or {}).get('msg', '?')}")
    return text


def symbolized(port: int, vmlinux: Path, deadline: float) -> str:
    """Attach gdb-multiarch with vmlinux to 127.0.0.1:port; info threads and bt per thread."""
    from pygdbmi.gdbcontroller import GdbController
    ctl = GdbController(command=[GDB, "--nx", "--quiet", "--interpreter=mi3", str(vmlinux)])
    try:
        token = 1
        for setting in ("set pagination off", "set confirm off", "set width 0",
                        "set print thread-events off"):
            _cli(ctl, setting, token, deadline)
            token += 1
        result, _ = _mi(ctl, f"-target-select remote 127.0.0.1:{port}", token, deadline)
        token += 1
        if result is None or result.get("message") == "error":
            msg = (result or {}).get("payload") or {}
            raise GdbError(f"gdb could not attach: {msg.get('msg', 'timed out')}")
        out = [_cli(ctl, "info threads", token, deadline).rstrip()]
        token += 1
        ids, _ = _mi(ctl, "-thread-list-ids", token, deadline)
        token += 1
        thread_ids = (ids or {}).get("payload", {}).get("thread-ids", {}).get("thread-id", [])
        if isinstance(thread_ids, str):
            thread_ids = [thread_ids]
        for tid in sorted(thread_ids, key=int):
            text = _cli(ctl, f"thread {tid}", token, deadline)
            token += 1
            m = re.search(r"Thread \d+\.(\d+)", text)
            cpu = f"cpu{int(m.group(1)) - 1}" if m else "cpu?"
            out.append(f"--- {cpu} (gdb thread {tid}) ---")
            out.append(_cli(ctl, f"bt {DEPTH}", token, deadline).rstrip())
            token += 1
        try:
            _cli(ctl, "detach", token, min(deadline, time.monotonic() + 3))
        except (TimeoutError, GdbError):
            pass
        return "\n".join(out)
    finally:
        ctl.exit()


def report(gdb: GdbRemote | None, *, vmlinux: Path | None, proxy=None, reserved_cpus=(),
           timeout: float = 30.0) -> str:
    """The backtrace section of a failure report.  Never raises; bounded by `timeout`."""
    if gdb is None:
        return "(no gdbstub connection)"
    deadline = time.monotonic() + timeout
    if proxy is not None and proxy.user_connected:
        return ("(a gdb is attached through --gdb: the guest is left to it; no backtrace taken)")
    own = None
    lines: list[str] = []
    try:
        if proxy is None:
            own = proxy = gdbproxy.GdbProxy(gdb, gdbproxy.listen(0)).start()
        proxy.hold()                                 # every CPU stopped, where it was
        lines += raw_registers(gdb, set(reserved_cpus))
        if vmlinux is None:
            lines.append("(no vmlinux: pass --vmlinux FILE, or keep vmlinux next to the Image, "
                         "for symbolized backtraces)")
        elif shutil.which(GDB) is None:
            lines.append(f"({GDB} not found: run scripts/setup)")
        elif not Path(vmlinux).is_file():
            lines.append(f"({vmlinux} not found: no symbolized backtrace)")
        else:
            lines.append(f"--- gdb-multiarch {vmlinux}: bt {DEPTH} of every vCPU ---")
            lines.append(symbolized(proxy.port, Path(vmlinux), deadline))
    except Exception as err:                       # the report must come out whatever happens
        log.debug("backtrace failed", exc_info=True)
        lines.append(f"(backtrace incomplete: {err})")
    finally:
        if own is not None:
            own.close()
    return "\n".join(lines)
