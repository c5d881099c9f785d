"""`gunyah-sim dt show` and `dt validate`: the guest DT without booting anything."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dts import validate as dtvalidate
from dts.generate import dtb_to_dts

from . import exitcodes
from .machine import MachineConfig, QemuError, QemuMachine, make_workdir
from .session import DEFAULT_BOOTARGS, RunOptions, build_dtb


def generate_dtb(opts: RunOptions) -> bytes:
    workdir = make_workdir()
    try:
        machine = QemuMachine(MachineConfig(smp=opts.smp, memory_mb=opts.memory_mb,
                                            cpu=opts.cpu), workdir)
        bootargs = DEFAULT_BOOTARGS + (" " + opts.append if opts.append else "")
        dtb, _gicd = build_dtb(machine, opts, bootargs)
        return dtb
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def show(opts: RunOptions) -> int:
    try:
        dtb = generate_dtb(opts)
    except QemuError as err:
        print(f"gunyah-sim dt show: {err}", file=sys.stderr)
        return exitcodes.QEMU
    if opts.dtb_out:
        opts.dtb_out.write_bytes(dtb)
    if shutil.which("dtc"):
        with tempfile.NamedTemporaryFile(suffix=".dtb") as f:
            f.write(dtb)
            f.flush()
            out = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", f.name],
                                 capture_output=True, text=True)
        sys.stdout.write(out.stdout)
    else:
        sys.stdout.write(dtb_to_dts(dtb))
    return exitcodes.OK


def validate(opts: RunOptions, dtb: Path | None, bindings: Path | None) -> int:
    try:
        blob = dtb.read_bytes() if dtb else generate_dtb(opts)
    except QemuError as err:
        print(f"gunyah-sim dt validate: {err}", file=sys.stderr)
        return exitcodes.QEMU
    report = dtvalidate.validate(blob, abi=opts.abi, bindings=bindings)
    for line in report.messages:
        print(line, file=sys.stderr if not report.ok else sys.stdout)
    if report.ok:
        print(f"gunyah-sim dt validate: OK ({report.summary})")
        return exitcodes.OK
    print(f"gunyah-sim dt validate: FAILED ({report.summary})", file=sys.stderr)
    return exitcodes.FAILURE
