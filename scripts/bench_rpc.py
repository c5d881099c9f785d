"""`scripts/bench-rpc`: Resource Manager round-trip latency from a real Linux guest.

The default Debian guest loads guest/modules/gsim_rmtest with bench=N: N VM_GET_VMID round
trips, each timed in the guest with ktime (from the request's first msgq_send to the reply in
hand: hypercall trap, RM handling, RX interrupt, the module's interrupt thread draining the
queue, wake-up).  The same calls' Python handling time comes from the run's hypercall trace
(py_us of the msgq_send, which includes the RM's decode/handle/encode since the RM consumes
the message inline, and of the msgq_recv).  Guest round trip minus Python handling is the
message-queue transport: traps, mailbox hand-offs, the interrupt and Linux's scheduling.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gunyah_el2 import capabilities  # noqa: E402
from qemu_bridge.linux_suite import run_module  # noqa: E402

_RESULT = re.compile(r"bench rpc=(\S+) n=(\d+) failures=(\d+) median_ns=(\d+) p99_ns=(\d+) "
                     r"min_ns=(\d+) max_ns=(\d+) mean_ns=(\d+)")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def python_times(trace: Path, n: int) -> dict[str, list[float]]:
    """py_us of the RM queue calls of the benchmark (the last n sends, the recvs after the
    first of them that returned a message)."""
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    sends = [r for r in records if r.get("call") == "msgq_send"
             and r["args"].get("capid") == capabilities.RM_TX.capid]
    sends = sends[-n:]
    if not sends:
        raise RuntimeError("the trace has no msgq_send on the RM TX queue")
    t0 = sends[0]["t"]
    recvs = [r for r in records if r.get("call") == "msgq_recv" and r["t"] >= t0
             and r["args"].get("capid") == capabilities.RM_RX.capid]
    got = [r for r in recvs if r["results"].get("error") == 0]
    empty = [r for r in recvs if r["results"].get("error") != 0]
    host_period = [(b["t"] - a["t"]) * 1e6 for a, b in zip(sends, sends[1:])]
    return {"send": [r["py_us"] for r in sends], "recv": [r["py_us"] for r in got],
            "recv_empty": [r["py_us"] for r in empty], "host_period": host_period,
            "per_rpc": [s["py_us"] + r["py_us"] for s, r in zip(sends, got)]}


def bench_once(abi: str, count: int, transport: str, timeout: float):
    with tempfile.TemporaryDirectory(prefix="gsim-bench-rpc-") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        ran = run_module(abi, f"bench={count}", transport=transport, timeout=timeout,
                         trace=trace)
        m = _RESULT.search(ran.tap)
        if not ran.result.ok or not m:
            raise RuntimeError(f"the benchmark run failed: {ran.result.reason}\n"
                               + "\n".join(ran.console.splitlines()[-30:]))
        guest = {"rpc": m.group(1), "n": int(m.group(2)), "failures": int(m.group(3)),
                 "median_us": int(m.group(4)) / 1e3, "p99_us": int(m.group(5)) / 1e3,
                 "min_us": int(m.group(6)) / 1e3, "mean_us": int(m.group(8)) / 1e3}
        return guest, python_times(trace, count)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="round trips per run")
    p.add_argument("--rounds", type=int, default=1, help="guest boots (results are pooled "
                   "for Python times; the guest's median/p99 are printed per run)")
    p.add_argument("--abi", default="v17", choices=("v6", "v17"))
    p.add_argument("--transport", default="shm", choices=("shm", "gdb"))
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    pooled: dict[str, list[float]] = {}
    print(f"bench-rpc: VM_GET_VMID round trips from a Linux guest (abi {args.abi}, "
          f"{args.transport} doorbell), {args.count} per run, {args.rounds} run(s)")
    guest_medians = []
    for i in range(args.rounds):
        guest, py = bench_once(args.abi, args.count, args.transport, args.timeout)
        guest_medians.append(guest["median_us"])
        for k, v in py.items():
            pooled.setdefault(k, []).extend(v)
        print(f"run {i + 1}: guest-timed round trip median {guest['median_us']:.1f} µs, "
              f"p99 {guest['p99_us']:.1f} µs, min {guest['min_us']:.1f} µs, "
              f"mean {guest['mean_us']:.1f} µs ({guest['n']} calls, {guest['failures']} failed)")
    rows = [("guest-timed round trip (ktime in the module)", None),
            ("Python: msgq_send incl. RM handling (trace py_us)", pooled["send"]),
            ("Python: msgq_recv of the reply (trace py_us)", pooled["recv"]),
            ("Python: both, per RPC", pooled["per_rpc"]),
            ("host-timed period between requests (trace t)", pooled["host_period"])]
    print(f"\n{'µs per RPC':52} {'samples':>7} {'median':>9} {'p99':>9}")
    print(f"{rows[0][0]:52} {len(guest_medians):>7} {statistics.median(guest_medians):9.1f} "
          f"{'(above)':>9}")
    for name, values in rows[1:]:
        if values:
            print(f"{name:52} {len(values):7d} {statistics.median(values):9.1f} "
                  f"{pct(values, 0.99):9.1f}")
    if pooled["recv_empty"]:
        print(f"{'Python: msgq_recv that found the queue empty':52} "
              f"{len(pooled['recv_empty']):7d} {statistics.median(pooled['recv_empty']):9.1f}")
    python = statistics.median(pooled["per_rpc"])
    rtt = statistics.median(guest_medians)
    print(f"\nsplit of the median round trip: Python handling {python:.1f} µs "
          f"({100 * python / rtt:.0f} %), message-queue transport (traps, mailbox, RX "
          f"interrupt, IRQ thread, wake-up) {rtt - python:.1f} µs ({100 * (rtt - python) / rtt:.0f} %)"
          f"; target <= 1000 µs: {'met' if rtt <= 1000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
