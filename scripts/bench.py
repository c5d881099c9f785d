"""Benchmarks: `scripts/bench-hvc` and `scripts/bench-boot` run this with the project's venv.

Every number is measured side by side with its baseline in the same invocation (runs
interleaved), and printed as medians (and p99 where there are enough samples) with ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from guest import build  # noqa: E402
from qemu_bridge.console import ready_marker  # noqa: E402
from qemu_bridge.session import DEFAULT_BOOTARGS, RunOptions, run  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# --- one trapped call ------------------------------------------------------------------------
def _guest_batches(text: str) -> list[float]:
    """Per-call µs of each batch the payload timed with its virtual counter."""
    head = re.search(r"BENCH mode=\S+ blocks=\d+ freq=(\d+) batch=(\d+)", text)
    ticks = re.search(r"BENCH ticks:([ \d]+)", text)
    if not head or not ticks:
        raise RuntimeError(f"benchmark payload printed no result:\n{text[-2000:]}")
    freq, batch = int(head.group(1)), int(head.group(2))
    return [int(t) / freq / batch * 1e6 for t in ticks.group(1).split()]


def baseline_qemu_smc(payload: str) -> list[float]:
    """Plain QEMU, no shim: the payload starts at EL2 and QEMU answers its SMCs in-process."""
    elf = build.payload_elf(payload)
    out = subprocess.run(["qemu-system-aarch64", "-machine", "virt,virtualization=on,gic-version=3",
                          "-cpu", "cortex-a57", "-m", "512M", "-display", "none", "-nodefaults",
                          "-serial", "stdio", "-device", f"loader,file={elf},cpu-num=0"],
                         capture_output=True, text=True, timeout=120)
    return _guest_batches(out.stdout)


def trapped(payload: str, transport: str, traced: bool = True):
    """Under gunyah-sim: host-timed µs between consecutive exits (from the trace), and
    guest-timed batches.  Untraced runs give only the latter (tracing costs per call)."""
    with tempfile.TemporaryDirectory() as tmp:
        trace, log = Path(tmp) / "t.jsonl", Path(tmp) / "console.log"
        result = run(RunOptions(kernel=build.build_payload(payload), bare_metal=True,
                                transport=transport, trace=trace if traced else None,
                                console_log=log, quiet=True, timeout=300))
        if not result.ok:
            raise RuntimeError(result.failure_report())
        text = log.read_text()
        if not traced:
            return [], _guest_batches(text)
        times = [r["t"] for r in map(json.loads, trace.read_text().splitlines())
                 if r.get("call") == "smccc_version"]
    host = [(b - a) * 1e6 for a, b in zip(times[20:], times[21:])]   # after the warm-up
    return host, _guest_batches(text)


class Load:
    """Busy loops on every core, to measure the shared-memory doorbell under load."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(os.cpu_count() or 2)]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def bench_hvc(rounds: int) -> None:
    rows: dict[str, list[float]] = {}

    def add(name, values):
        rows.setdefault(name, []).extend(values)

    for _ in range(rounds):                   # interleaved, so drift hits every row alike
        for payload, tag in (("bench_hvc", ""), ("bench_hvc_blocks", " + 1000 TBs")):
            add(f"QEMU in-process SMC (baseline){tag}", baseline_qemu_smc(payload))
            add(f"shm doorbell, guest-timed, no trace{tag}", trapped(payload, "shm", False)[1])
            host, guest = trapped(payload, "shm")
            add(f"shm doorbell, host-timed, --trace on{tag}", host)
            add(f"shm doorbell, guest-timed, --trace on{tag}", guest)
            host, _ = trapped(payload, "gdb")
            add(f"gdb doorbell, host-timed{tag}", host)
        with Load():
            host, _ = trapped("bench_hvc", "shm")
            add("shm doorbell under load (all cores busy), guest-timed, no trace",
                trapped("bench_hvc", "shm", False)[1])
        add("shm doorbell under load (all cores busy), host-timed, --trace on", host)
    base = {"": statistics.median(rows["QEMU in-process SMC (baseline)"]),
            " + 1000 TBs": statistics.median(rows["QEMU in-process SMC (baseline) + 1000 TBs"])}
    print(f"\nbench-hvc: {rounds} interleaved round(s); µs per call; baseline = QEMU's own "
          "PSCI_VERSION SMC (guest-timed in batches of 50)")
    print(f"{'path':66} {'samples':>7} {'median':>9} {'p99':>9} {'ratio':>8}")
    for name, values in rows.items():
        b = base[" + 1000 TBs"] if "TBs" in name else base[""]
        print(f"{name:66} {len(values):7d} {statistics.median(values):9.2f} "
              f"{pct(values, 0.99):9.2f} {statistics.median(values) / b:7.1f}x")


# --- boot ------------------------------------------------------------------------------------
def _time_to_marker(cmd: list[str], marker: str, timeout: float = 120) -> float:
    start = time.monotonic()
    child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace",
                          timeout=timeout)
    try:
        child.expect(marker)
        return time.monotonic() - start
    finally:
        child.close(force=True)


def bench_boot(rounds: int) -> None:
    kernel = build.default_kernel()
    base = build.build_base_initramfs()
    with tempfile.TemporaryDirectory() as tmp:
        token = secrets.token_hex(4)
        initrd = build.build_run_initramfs(base, Path(tmp) / "initrd.cpio", command="true",
                                           token=token)
        plain = ["qemu-system-aarch64", "-machine", "virt,gic-version=3", "-cpu", "cortex-a57",
                 "-m", "512M", "-display", "none", "-nodefaults", "-serial", "stdio",
                 "-kernel", str(kernel), "-initrd", str(initrd), "-append", DEFAULT_BOOTARGS,
                 "-no-reboot"]
        sim = [str(Path(sys.executable).parent / "gunyah-sim"), "run", "--exec", "true"]
        rows: dict[str, list[float]] = {"plain QEMU (no shim, QEMU's PSCI)": [],
                                        "gunyah-sim run (shim + Python EL2)": []}
        for _ in range(rounds):
            rows["plain QEMU (no shim, QEMU's PSCI)"].append(
                _time_to_marker(plain, ready_marker(token)))
            rows["gunyah-sim run (shim + Python EL2)"].append(
                _time_to_marker(sim, r"GSIM-INIT-READY-"))
    b = statistics.median(rows["plain QEMU (no shim, QEMU's PSCI)"])
    print(f"\nbench-boot: {rounds} interleaved runs each; seconds from command start to the "
          "init marker (same Debian kernel and busybox initramfs)")
    print(f"{'command':40} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}")
    for name, values in rows.items():
        print(f"{name:40} {statistics.median(values):8.3f} {min(values):8.3f} "
              f"{max(values):8.3f} {statistics.median(values) / b:6.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=("hvc", "boot"))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.what == "hvc":
        bench_hvc(args.rounds)
    else:
        bench_boot(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
