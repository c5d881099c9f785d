"""The `linux` conformance suite: a real Linux guest checks the Resource Manager.

The default Debian guest boots under the hypervisor, loads our out-of-tree module
guest/modules/gsim_rmtest (built by guest/kmod.py) and the module runs its RM RPC cases over
real hypercalls and interrupts.  It reports TAP through printk, each line prefixed
"gsim_rmtest: "; the console carries them with printk timestamps, which are stripped here.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODULE = "gsim_rmtest"
PREFIX = f"{MODULE}: "


def extract_tap(console: str, prefix: str = PREFIX) -> str:
    """The module's TAP from a console log: text after the prefix on each line that has it.

    Drops printk timestamps ("[    1.234567] ") and anything else before the prefix (a line
    the shell was printing when the kernel message came), and carriage returns.
    """
    out = []
    for raw in console.splitlines():
        line = raw.replace("\r", "")
        at = line.find(prefix)
        if at >= 0:
            out.append(line[at + len(prefix):].rstrip())
    return "\n".join(out) + ("\n" if out else "")


def module_command(params: str = "") -> str:
    """The guest command: let KERN_INFO reach the console, then load the module."""
    return (f"echo 8 > /proc/sys/kernel/printk; insmod /{MODULE}.ko"
            + (f" {params}" if params else ""))


@dataclass
class ModuleRun:
    result: object        # session.RunResult
    console: str          # the whole console log
    tap: str              # the module's lines, prefix and timestamps stripped


def run_module(abi: str, params: str = "", *, smp: int = 1, transport: str = "shm",
               timeout: float = 120.0, trace: Path | None = None,
               verbose: bool = False) -> ModuleRun:
    """Boot the default guest with the module in its initramfs and load it once."""
    from guest.kmod import build_rmtest
    from .session import RunOptions, run
    ko = build_rmtest()
    with tempfile.TemporaryDirectory(prefix="gsim-linux-") as tmp:
        overlay = Path(tmp) / "overlay"
        overlay.mkdir()
        shutil.copy2(ko, overlay / ko.name)
        log = Path(tmp) / "console.log"
        result = run(RunOptions(overlays=[overlay], command=module_command(params), abi=abi,
                                smp=smp, timeout=timeout, transport=transport,
                                console_log=log, quiet=not verbose, trace=trace))
        console = log.read_text(errors="replace") if log.exists() else ""
    return ModuleRun(result, console, extract_tap(console))


def run_linux_suite(suite, abi: str, *, transport: str = "shm", timeout: float = 120.0,
                    trace: Path | None = None, verbose: bool = False):
    """conformance.run_suite for suites of kind "linux"."""
    from guest.build import AssetError
    from .conformance import SuiteResult, parse_tap
    started = time.monotonic()
    try:
        ran = run_module(abi, smp=suite.smp, transport=transport, timeout=timeout,
                         trace=trace, verbose=verbose)
    except AssetError as err:
        return SuiteResult(suite.name, abi, [], time.monotonic() - started,
                           f"cannot build the module: {err}")
    cases, plan, bailed = parse_tap(ran.tap)
    problem = None
    if not ran.result.ok:
        problem = ran.result.reason
    elif bailed:
        why = "; ".join(cases[-1].diagnostics) if cases and not cases[-1].passed else ""
        problem = "the module bailed out" + (f": {why}" if why else "")
    elif plan is None or plan != len(cases):
        problem = f"TAP plan {plan} does not match {len(cases)} results"
    return SuiteResult(suite.name, abi, cases, time.monotonic() - started, problem,
                       ran.console)
