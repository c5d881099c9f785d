"""`gunyah-sim conformance`: TAP suites that check the hypervisor from inside a guest.

Each suite is a bare-metal payload (guest/payloads/suite_*.c) that the EL2 shim starts at EL1
in place of Linux; it makes real hypercalls, prints TAP on the UART and powers off.  A suite
runs once per driver generation (--abi) because the answers differ (the UID, for one).
Suites of kind "linux" boot the default Linux guest instead and load a test module
(qemu_bridge/linux_suite.py).
"""
from __future__ import annotations

import re
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from gunyah_el2.hypervisor import ABIS

from . import exitcodes


@dataclass(frozen=True)
class Suite:
    name: str
    payload: str          # guest/payloads/<payload>.c
    smp: int
    description: str
    vm_cpus: int = 0      # CPUs reserved for secondary VMs
    loads: object = None  # () -> [(file, physical address)] the host puts in RAM first
    kind: str = "payload"  # "payload": bare-metal payload; "linux": Linux guest + test module


def _vm_suite_loads() -> list:
    """VM A (1 vCPU) and VM B (2 vCPUs) run vm_hello, VM C (1 vCPU) vm_spin: each image at the
    start of its VM's memory and a DTB at +1 MiB, which the primary payload lends and starts
    through the RM."""
    from dts.generate import vm_dtb
    from guest.build import build_payload, cache_dir
    from gunyah_el2 import capabilities, vm
    loads = []
    for pa, ncpus, image in zip(capabilities.VM_TEST_MEMORY, (1, 2, 1),
                                ("vm_hello", "vm_hello", "vm_spin")):
        path = cache_dir() / "build" / "payloads" / f"vm-{ncpus}cpu.dtb"
        blob = vm_dtb(ncpus, vm.DEFAULT_IPA_BASE)
        if not path.exists() or path.read_bytes() != blob:
            path.write_bytes(blob)
        loads += [(build_payload(image), pa), (path, pa + 0x10_0000)]
    return loads


SUITES = {
    s.name: s for s in (
        Suite("hypercalls", "suite_hypercalls", 2,
              "SMCCC, PSCI (CPU_ON on a second CPU), vendor UID and hyp_identify"),
        Suite("msgq", "suite_msgq", 1,
              "message queues: send/receive, error codes, full/empty, GIC interrupts"),
        Suite("rm", "suite_rm", 1,
              "Resource Manager RPC: VMIDs, VM states, memory parcels, errors, fragments"),
        Suite("vm", "suite_vm", 1,
              "secondary VMs through the RM: lend, configure, start two VMs (1 and 2 vCPUs), "
              "stage-2 isolation both ways, exit notifications, reclaim", vm_cpus=3,
              loads=_vm_suite_loads),
        Suite("linux", "gsim_rmtest", 1,
              "Linux guest: the gsim_rmtest module finds the RM in the DT and runs RM RPCs over "
              "real hypercalls and interrupts (VMIDs, lend/reclaim, fragments, bad requests)",
              kind="linux"),
    )
}

_TAP_LINE = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(SKIP|TODO)\b(.*))?$")


@dataclass
class Case:
    name: str
    passed: bool
    skipped: bool = False
    diagnostics: list[str] = field(default_factory=list)


@dataclass
class SuiteResult:
    suite: str
    abi: str
    cases: list[Case]
    seconds: float
    problem: str | None = None          # the run itself failed (no plan, panic, timeout, ...)
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.problem is None and all(c.passed for c in self.cases)


def parse_tap(text: str) -> tuple[list[Case], int | None, bool]:
    """Cases, the plan's count, and whether the payload bailed out."""
    cases: list[Case] = []
    plan = None
    bailed = False
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"^1\.\.(\d+)", line):
            plan = int(m.group(1))
        elif line.startswith("Bail out!"):
            bailed = True
        elif m := _TAP_LINE.match(line):
            skipped = (m.group(4) or "").upper() == "SKIP"
            cases.append(Case(name=m.group(3).strip() or f"case {len(cases) + 1}",
                              passed=m.group(1) == "ok", skipped=skipped))
        elif line.startswith("#") and cases and not cases[-1].passed:
            cases[-1].diagnostics.append(line.lstrip("# "))
    return cases, plan, bailed


def run_suite(suite: Suite, abi: str, *, transport: str = "shm", timeout: float = 120.0,
              trace: Path | None = None, verbose: bool = False) -> SuiteResult:
    if suite.kind == "linux":
        from .linux_suite import run_linux_suite
        return run_linux_suite(suite, abi, transport=transport, timeout=timeout, trace=trace,
                               verbose=verbose)
    from guest.build import build_payload
    from .session import RunOptions, run
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gsim-conf-") as tmp:
        log = Path(tmp) / "console.log"
        result = run(RunOptions(kernel=build_payload(suite.payload), bare_metal=True, abi=abi,
                                smp=suite.smp, timeout=timeout, transport=transport,
                                console_log=log, quiet=not verbose, trace=trace,
                                vm_cpus=suite.vm_cpus,
                                extra_loads=suite.loads() if suite.loads else [],
                                vm_console_dir=Path(tmp) / "vms"))
        vm_logs = sorted((Path(tmp) / "vms").glob("vm*.log"))
        vm_output = {p.stem: p.read_text(errors="replace") for p in vm_logs}
        output = log.read_text(errors="replace") if log.exists() else ""
    cases, plan, bailed = parse_tap(re.sub(r"(?m)^\[vm\d+\] .*\n?", "", output))
    for name, text in vm_output.items():           # each VM's own TAP: cases of this suite too
        vm_cases, vm_plan, vm_bailed = parse_tap(text)
        for c in vm_cases:
            c.name = f"{name}: {c.name}"
        cases += vm_cases
        bailed |= vm_bailed or (bool(vm_cases) and vm_plan != len(vm_cases))
        plan = None if plan is None else plan + len(vm_cases)
    problem = None
    if not result.ok:
        problem = result.reason
    elif bailed:
        problem = "the payload bailed out (unexpected exception)"
    elif plan is None or plan != len(cases):
        problem = f"TAP plan {plan} does not match {len(cases)} results"
    return SuiteResult(suite.name, abi, cases, time.monotonic() - started, problem, output)


def to_tap(results: list[SuiteResult]) -> str:
    lines = ["TAP version 13"]
    n = 0
    for r in results:
        lines.append(f"# suite {r.suite} (abi {r.abi}): {r.seconds:.2f} s")
        for c in r.cases:
            n += 1
            status = "ok" if c.passed else "not ok"
            skip = " # SKIP" if c.skipped else ""
            lines.append(f"{status} {n} - {r.suite}/{r.abi}: {c.name}{skip}")
            lines += [f"  # {d}" for d in c.diagnostics]
        if r.problem:
            n += 1
            lines.append(f"not ok {n} - {r.suite}/{r.abi}: suite run # {r.problem}")
    lines.append(f"1..{n}")
    return "\n".join(lines) + "\n"


def to_junit(results: list[SuiteResult]) -> str:
    root = ET.Element("testsuites", name="gunyah-sim conformance")
    for r in results:
        failures = sum(not c.passed for c in r.cases) + (r.problem is not None)
        suite = ET.SubElement(root, "testsuite", name=f"{r.suite}.{r.abi}",
                              tests=str(len(r.cases) + (r.problem is not None)),
                              failures=str(failures),
                              skipped=str(sum(c.skipped for c in r.cases)),
                              time=f"{r.seconds:.3f}")
        for c in r.cases:
            case = ET.SubElement(suite, "testcase", classname=f"{r.suite}.{r.abi}", name=c.name)
            if c.skipped:
                ET.SubElement(case, "skipped")
            elif not c.passed:
                ET.SubElement(case, "failure", message=c.name).text = "\n".join(c.diagnostics)
        if r.problem:
            case = ET.SubElement(suite, "testcase", classname=f"{r.suite}.{r.abi}",
                                 name="suite run")
            ET.SubElement(case, "failure", message=r.problem).text = r.output[-4000:]
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def add_parser(sub) -> None:
    from .cli import Formatter, add_verbose
    p = sub.add_parser("conformance", help="run the TAP conformance suites",
                       formatter_class=Formatter, epilog=exitcodes.help_text(),
                       description=__doc__)
    add_verbose(p)
    p.add_argument("--suite", action="append", choices=sorted(SUITES), metavar="NAME",
                   help=f"suite to run (repeatable; default: all of {', '.join(SUITES)})")
    p.add_argument("--abi", action="append", choices=ABIS,
                   help="driver generation(s) to serve (repeatable; default: every one)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--tap", type=Path, metavar="FILE", help="write the combined TAP to FILE")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML to FILE")
    p.add_argument("--transport", choices=("shm", "gdb"), default="shm",
                   help="mailbox doorbell (see run --help)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="per suite run (exit code 124 when a suite times out)")
    p.add_argument("--trace", type=Path, metavar="FILE",
                   help="write the trapped calls of the last suite run to FILE")
    p.set_defaults(func=cmd_conformance)


def cmd_conformance(args) -> int:
    if args.list:
        for s in SUITES.values():
            print(f"{s.name:12} {s.description} (smp {s.smp})")
        return exitcodes.OK
    if not args.verbose:       # the suites provoke unknown calls on purpose; keep them quiet
        import logging
        for name in ("gunyah_sim.hyp", "gunyah_sim.rm"):
            logging.getLogger(name).setLevel(logging.ERROR)
    names = args.suite or list(SUITES)
    abis = args.abi or list(ABIS)
    results = []
    for name in names:
        for abi in abis:
            r = run_suite(SUITES[name], abi, transport=args.transport, timeout=args.timeout,
                          trace=args.trace, verbose=args.verbose > 0)
            passed = sum(c.passed for c in r.cases)
            state = "PASS" if r.passed else "FAIL"
            print(f"{state} {name} (abi {abi}): {passed}/{len(r.cases)} cases, {r.seconds:.2f} s"
                  + (f" - {r.problem}" if r.problem else ""), flush=True)
            for c in r.cases:
                if not c.passed:
                    print(f"    not ok: {c.name} {'; '.join(c.diagnostics)}")
            results.append(r)
    tap = to_tap(results)
    if args.tap:
        args.tap.write_text(tap)
    if args.junit:
        args.junit.write_text(to_junit(results))
    passed = sum(c.passed for r in results for c in r.cases)
    failed = sum(not c.passed for r in results for c in r.cases) + \
        sum(r.problem is not None for r in results)
    print(f"{passed} passed, {failed} failed")
    if any("timeout" in (r.problem or "") for r in results):
        return exitcodes.TIMEOUT
    return exitcodes.OK if failed == 0 else exitcodes.FAILURE
