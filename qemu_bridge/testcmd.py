"""`gunyah-sim test`: boot once, run test executables and commands in the guest, report.

The host copies each --tests DIR into the per-run initramfs overlay (/gsim/tests/<name>/), each
--exec into /gsim/exec/<n>.sh, and a generated busybox sh runner (/gsim/runner.sh, see
testreport.RUNNER_HEAD) that the guest's /gsim/cmd starts.  The runner frames every test with
markers carrying a token of its own; the host reads them from the console log while the guest
runs (progress, per-phase timeouts through RunOptions.watchdog) and again at the end (results).
"""
from __future__ import annotations

import codecs
import datetime as dt
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import exitcodes
from . import testreport as tr
from .cli import (Formatter, add_verbose, check_machine_args, machine_options, run_options,
                  run_options_from)

GRACE = 15.0            # host-side backstop beyond a test's own timeout (the guest kills first)
GUEST_TESTS = "/gsim/tests"
GUEST_EXEC = "/gsim/exec"

DESCRIPTION = """\
Boot the guest once and run tests in it: every executable file directly in each --tests DIR
(run from a copy of DIR in the guest, /gsim/tests/<DIR name>/, with busybox sh as the shell) and
every --exec CMD.  Exit code 0 passes, 4 skips (kselftest), anything else fails; a test that
prints TAP contributes its subtests.  A `settings` file with `timeout=N` in DIR sets the timeout
of that directory's tests (kselftest style).

The run also fails on kernel WARN/BUG/Oops/KASAN/lockdep reports (unless --allow-warnings).
Writes junit.xml, results.tap, results.json, console.log, kernel.log, trace.jsonl, guest.dtb
and reproducer.sh into the artifacts directory (-o).  Progress goes to stdout (-q: the summary
only; -v: the console too).  --timeout caps the whole run (default: the boot timeout plus every
test's timeout and some slack)."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("test", help="run tests in the guest (JUnit, TAP, artifacts)",
                              formatter_class=Formatter, description=DESCRIPTION,
                              epilog=exitcodes.help_text())
    add_verbose(p)
    g = p.add_argument_group("tests")
    g.add_argument("--tests", type=Path, action="append", default=[], metavar="DIR",
                   help="directory of test executables (repeatable)")
    g.add_argument("--exec", dest="exec_cmds", action="append", default=[], metavar="CMD",
                   help="a shell command run as a test (repeatable)")
    g.add_argument("--allow-warnings", action="store_true",
                   help="do not fail the run on kernel warnings (they are still listed)")
    g.add_argument("--boot-timeout", type=float, default=60.0, metavar="S",
                   help="time from the guest's start to its init")
    g.add_argument("--test-timeout", type=float, default=45.0, metavar="S",
                   help="time for each test (then it is killed and the next one runs)")
    g = p.add_argument_group("reports")
    g.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="artifacts directory (default: ./gunyah-sim-test-<timestamp>)")
    g.add_argument("--junit", type=Path, metavar="FILE", help="also write the JUnit XML to FILE")
    g.add_argument("--tap", type=Path, metavar="FILE", help="also write the TAP report to FILE")
    machine_options(p)
    run_options(p)
    # --timeout caps the whole run; by default it is derived from the per-phase timeouts
    p.set_defaults(func=cmd_test, timeout=None)


# --- preparing the run ------------------------------------------------------------------------

def _settings_timeout(directory: Path, default: float) -> float:
    settings = directory / "settings"
    if settings.is_file():
        for line in settings.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "timeout":
                try:
                    return float(value)
                except ValueError:
                    pass
    return default


def discover(test_dirs: list[Path], exec_cmds: list[str], timeout: float,
             exclude: Path | None = None) -> tuple[list[tr.TestSpec], list[tuple[Path, str]]]:
    """The tests to run, and each tests directory with its unique name in the guest."""
    specs: list[tr.TestSpec] = []
    named: list[tuple[Path, str]] = []
    used: set[str] = set()
    for d in test_dirs:
        d = d.resolve()
        base = d.name or "tests"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        named.append((d, name))
        limit = _settings_timeout(d, timeout)
        for f in sorted(d.iterdir()):
            if f.name.startswith(".") or not f.is_file() or not os.access(f, os.X_OK):
                continue
            if exclude is not None and f.resolve() == exclude:
                continue
            specs.append(tr.TestSpec(id=len(specs) + 1, name=f"{name}/{f.name}", kind="file",
                                     argv=[f"./{f.name}"], cwd=f"{GUEST_TESTS}/{name}",
                                     timeout=limit))
    for i, cmd in enumerate(exec_cmds, 1):
        specs.append(tr.TestSpec(id=len(specs) + 1, name=f"exec-{i}", kind="exec",
                                 argv=["sh", f"{GUEST_EXEC}/{i}.sh"], cwd="/root",
                                 timeout=timeout, command=cmd))
    return specs, named


def _ignore_inside(skip: Path):
    """copytree ignore function that leaves out `skip` (the artifacts dir inside a tests dir)."""
    def ignore(src, names):
        return [n for n in names if (Path(src) / n).resolve() == skip]
    return ignore


def stage_overlay(root: Path, named: list[tuple[Path, str]], specs: list[tr.TestSpec],
                  token: str, skip: Path) -> None:
    for src, name in named:
        shutil.copytree(src, root / GUEST_TESTS.lstrip("/") / name, symlinks=True,
                        ignore=_ignore_inside(skip))
    exec_dir = root / GUEST_EXEC.lstrip("/")
    for s in specs:
        if s.kind == "exec":
            exec_dir.mkdir(parents=True, exist_ok=True)
            (exec_dir / s.argv[1].rsplit("/", 1)[1]).write_text(s.command + "\n")
    runner = root / "gsim" / "runner.sh"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(tr.runner_script(token, specs))
    runner.chmod(0o755)


def copy_into(src: Path, dst: Path, skip: Path) -> None:
    """Copy a tests dir or overlay into the artifacts dir (unless it already is that copy)."""
    if dst.exists() and dst.resolve() == src.resolve():
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore=_ignore_inside(skip))
    else:
        shutil.copy2(src, dst)


def gunyah_sim_command() -> list[str]:
    exe = Path(sys.executable).parent / "gunyah-sim"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "qemu_bridge.cli"]


def reproducer_text(args, kernel: Path, tests: list[str], overlays: list[str],
                    original: list[Path]) -> str:
    """A shell script that reruns the same tests on the same kernel with the same options."""
    words = [shlex.quote(w) for w in gunyah_sim_command()] + [
        "test", "--kernel", shlex.quote(str(kernel))]
    for name in tests:
        words += ["--tests", '"$here"/' + shlex.quote(f"tests/{name}")]
    for cmd in args.exec_cmds:
        words += ["--exec", shlex.quote(cmd)]
    for name in overlays:
        words += ["--overlay", '"$here"/' + shlex.quote(f"overlays/{name}")]
    words += ["--smp", str(args.smp), "--memory", str(args.memory), "--cpu",
              shlex.quote(args.cpu), "--abi", args.abi, "--transport", args.transport,
              "--boot-timeout", f"{args.boot_timeout:g}", "--test-timeout",
              f"{args.test_timeout:g}"]
    if args.append:
        words += ["--append", shlex.quote(args.append)]
    if args.timeout is not None:
        words += ["--timeout", f"{args.timeout:g}"]
    if args.allow_warnings:
        words.append("--allow-warnings")
    words.append('"$@"')
    lines = ["#!/bin/sh",
             "# Reruns a `gunyah-sim test` run: same kernel, tests (copied next to this script),",
             "# commands and options.  Extra arguments are passed on (e.g. -o DIR, -v).",
             f"# Original run: {dt.datetime.now().isoformat(timespec='seconds')}",
             *[f"# tests from: {p}" for p in original],
             'here=$(cd "$(dirname "$0")" && pwd)',
             "exec " + " \\\n    ".join(_wrap(words))]
    return "\n".join(lines) + "\n"


def _wrap(words: list[str]) -> list[str]:
    """One line per option with its value (joined with backslash-newlines)."""
    out: list[str] = []
    for w in words:
        if not out or w.startswith("-") or w == '"$@"':
            out.append(w)
        else:
            out[-1] += " " + w
    return out


# --- while the guest runs ---------------------------------------------------------------------

class Progress:
    """Test names and times: a live line on a terminal, plain lines otherwise (or in CI)."""

    def __init__(self, stream, started: float, *, live: bool, quiet: bool):
        self.stream, self.started, self.live, self.quiet = stream, started, live, quiet
        self._shown = False

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = False

    def say(self, text: str) -> None:
        if self.quiet:
            return
        self._clear()
        self.stream.write(f"[{time.monotonic() - self.started:7.1f}s] {text}\n")
        self.stream.flush()

    def status(self, text: str, seconds: float) -> None:
        if self.quiet or not self.live:
            return
        self.stream.write(f"\r\x1b[K  ... {text} ({seconds:.0f} s)")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        self._clear()
        self.stream.flush()


def describe(r: tr.TestResult) -> str:
    extra = []
    if r.status in (tr.FAIL, tr.SKIP) and r.exit_code not in (None, 0):
        extra.append(f"exit {r.exit_code}")
    if r.subtests:
        c = {}
        for _, s in tr.flatten(r.subtests, r.name):
            c[s.status] = c.get(s.status, 0) + 1
        extra.append(", ".join(f"{n} {k}" for k, n in c.items()) + " subtests")
    label = f"{r.status.upper():8} {r.name}"
    if r.kind == "exec":
        cmd = r.command if len(r.command) <= 40 else r.command[:37] + "..."
        label += f" ({cmd})"
    return f"{label}  {r.duration:.2f} s" + (f"  [{'; '.join(extra)}]" if extra else "")


class Watch:
    """RunOptions.watchdog: follows the console log, reports progress, enforces the boot and
    per-test deadlines (the guest runner kills a test at its timeout; this is the backstop for
    a guest that stopped responding)."""

    def __init__(self, log_path: Path, parser: tr.MarkerParser, specs: list[tr.TestSpec],
                 progress: Progress, boot_timeout: float):
        self.log_path, self.parser, self.progress = log_path, parser, progress
        self.specs = {s.id: s for s in specs}
        self.boot_timeout = boot_timeout
        self.t0: float | None = None
        self.test_t0 = 0.0
        self.phase = "boot"
        self.failed_phase: str | None = None
        self._f = None
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _read(self) -> list[str]:
        if self._f is None:
            try:
                self._f = open(self.log_path, "rb")
            except OSError:
                return []
        text = self._partial + self._dec.decode(self._f.read())
        *lines, self._partial = text.split("\n")
        return lines

    def drain(self) -> None:
        """After the run: report the tests that ended since the last poll."""
        lines = self._read()
        if self._partial:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            for ev in self.parser.feed(line):
                self._on_event(ev, None)

    def __call__(self) -> str | None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        for line in self._read():
            for ev in self.parser.feed(line):
                self._on_event(ev, now)
        if not self.parser.ready:
            if now - self.t0 > self.boot_timeout:
                self.failed_phase = "boot"
                return (f"boot timed out after {self.boot_timeout:g} s: the guest did not reach "
                        "init (--boot-timeout)")
            self.progress.status("booting", now - self.t0)
            return None
        cur = self.parser.current
        if cur is not None:
            spec = self.specs[cur]
            if now - self.test_t0 > spec.timeout + GRACE:
                self.failed_phase = "test"
                return (f"test {spec.name} timed out after {spec.timeout:g} s and the guest "
                        f"did not recover within {GRACE:g} s more")
            self.progress.status(f"running {spec.name}", now - self.test_t0)
        return None

    def _on_event(self, ev: tuple, now: float | None) -> None:
        if ev[0] == "ready":
            self.phase = "tests"
            self.progress.say("booted to init")
        elif ev[0] == "start":
            self.test_t0 = now
        elif ev[0] == "end":
            self.progress.say(describe(self.parser.results[ev[1]]))


# --- the command ------------------------------------------------------------------------------

def _check(args) -> str | None:
    problem = check_machine_args(args)
    if problem:
        return problem
    if args.initrd is not None:
        return "--initrd cannot be used: the tests need the default initramfs"
    for d in args.tests:
        if not d.is_dir():
            return f"--tests {d}: not a directory"
    if args.boot_timeout <= 0 or args.test_timeout <= 0:
        return "--boot-timeout and --test-timeout must be positive"
    if args.timeout is not None and args.timeout <= 0:
        return "--timeout must be positive"
    return None


def default_output_dir() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path.cwd() / f"gunyah-sim-test-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path.cwd() / f"gunyah-sim-test-{stamp}-{n}"
    return path


def cmd_test(args) -> int:
    from guest import build as guest_build
    from .session import run

    problem = _check(args)
    if problem:
        print(f"gunyah-sim test: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        kernel = (args.kernel or guest_build.default_kernel()).resolve()
    except guest_build.AssetError as err:
        print(f"gunyah-sim test: {err}", file=sys.stderr)
        return exitcodes.SETUP
    out = (args.output or default_output_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs, named = discover(args.tests, args.exec_cmds, args.test_timeout)
    token = secrets.token_hex(6)
    started_wall = dt.datetime.now().astimezone()
    started = time.monotonic()

    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    progress = Progress(sys.stdout, started, quiet=args.quiet,
                        live=sys.stdout.isatty() and not ci and not args.verbose)
    progress.say(f"gunyah-sim test: {len(specs)} test{'' if len(specs) == 1 else 's'} on {kernel} "
                 f"(smp {args.smp}, abi {args.abi}); artifacts in {out}")

    paths = {k: out / v for k, v in (("console", "console.log"), ("trace", "trace.jsonl"),
                                      ("dtb", "guest.dtb"), ("kernel", "kernel.log"),
                                      ("json", "results.json"), ("junit", "junit.xml"),
                                      ("tap", "results.tap"), ("repro", "reproducer.sh"))}
    # The artifacts keep a copy of the tests and overlays so that reproducer.sh still works
    # when the originals change.
    for sub in ("tests", "overlays"):
        if (out / sub).exists() and not any(p.resolve().is_relative_to(out / sub)
                                            for p in [*args.tests, *args.overlay]):
            shutil.rmtree(out / sub)
    for src, name in named:
        (out / "tests").mkdir(exist_ok=True)
        copy_into(src, out / "tests" / name, out)
    overlay_names = []
    for i, ov in enumerate(args.overlay, 1):
        (out / "overlays").mkdir(exist_ok=True)
        name = f"{i}-{ov.resolve().name}"
        copy_into(ov.resolve(), out / "overlays" / name, out)
        overlay_names.append(name)
    paths["repro"].write_text(reproducer_text(args, kernel, [n for _, n in named],
                                              overlay_names, [p for p, _ in named]))
    paths["repro"].chmod(0o755)

    # next to the session's own work directory (XDG_RUNTIME_DIR or /tmp), removed at the end
    staging = Path(tempfile.mkdtemp(prefix="gunyah-sim-test-",
                                    dir=os.environ.get("XDG_RUNTIME_DIR") or None))
    parser = tr.MarkerParser(token, specs)
    watch = Watch(paths["console"], parser, specs, progress, args.boot_timeout)
    try:
        stage_overlay(staging, named, specs, token, out)
        opts = run_options_from(args)
        opts.kernel = kernel
        opts.overlays = [*args.overlay, staging]
        opts.command = "sh /gsim/runner.sh"
        opts.quiet = not args.verbose
        opts.console_log, opts.trace, opts.dtb_out = paths["console"], paths["trace"], paths["dtb"]
        opts.timeout = args.timeout or (args.boot_timeout + 30.0
                                        + sum(s.timeout + GRACE for s in specs))
        opts.watchdog = watch
        result = run(opts)
    finally:
        if watch.t0 is not None:
            watch.drain()
        watch.close()
        progress.done()
        shutil.rmtree(staging, ignore_errors=True)

    report = build_report(result, specs, paths, args, watch, started_wall, kernel)
    write_reports(report, paths, args)
    print_summary(report, result, out, sys.stdout)
    return report.exit_code


def build_report(result, specs, paths, args, watch: Watch, started_wall, kernel) -> tr.Report:
    parser = tr.MarkerParser(watch.parser.token, specs)
    if paths["console"].exists():
        parser.feed_text(paths["console"].read_text(encoding="utf-8", errors="replace"))
    finished = result.guest_status is not None
    current = parser.results.get(parser.current) if parser.current is not None else None
    if finished:
        reason = "" if parser.done else (
            f"the test runner exited with status {result.guest_status} before it finished")
    elif result.code == exitcodes.PANIC:
        where = f"during test {current.name}" if current else (
            "during boot" if not parser.ready else "between tests")
        reason = f"{result.reason} ({where})"
    elif result.code == exitcodes.TIMEOUT and watch.failed_phase is None:
        if not parser.ready:
            reason = f"boot timed out: the guest did not reach init within --timeout {result.reason}"
        elif current is not None:
            reason = f"test {current.name} was still running at the run's --timeout: {result.reason}"
        else:
            reason = result.reason
    else:
        reason = result.reason
    parser.finalize(reason or "the run ended early")
    if current is not None and watch.failed_phase == "test":
        current.status, current.message = tr.TIMEOUT, reason

    kernel_log = parser.kernel_log()
    paths["kernel"].write_text(kernel_log)
    splats = tr.merge_splats(tr.find_splats(parser.kernel_lines),
                             tr.find_splats(parser.dmesg or []))
    trace_lines = paths["trace"].read_text().splitlines() if paths["trace"].exists() else []
    report = tr.Report(
        tests=[parser.results[s.id] for s in specs],
        boot_status=tr.PASS if parser.ready else tr.FAIL,
        boot_seconds=result.boot_seconds or 0.0,
        boot_message="" if parser.ready else (reason or result.reason),
        splats=splats, allow_warnings=args.allow_warnings,
        gunyah=tr.gunyah_lines(kernel_log),
        hypervisor=tr.hypervisor_summary(trace_lines),
        reason=reason, seconds=result.seconds,
        started=started_wall.isoformat(timespec="seconds"),
        properties={"kernel": str(kernel), "abi": args.abi, "smp": args.smp,
                    "memory_mb": args.memory, "cpu": args.cpu, "transport": args.transport,
                    "boot_timeout": args.boot_timeout, "test_timeout": args.test_timeout,
                    "allow_warnings": args.allow_warnings})
    if finished:
        report.exit_code = exitcodes.OK if report.all_passed() and parser.done \
            else exitcodes.FAILURE
    else:
        report.exit_code = result.code
    if not report.reason and report.exit_code:
        bad = [t.name for t in report.tests if t.status not in (tr.PASS, tr.SKIP)]
        parts = []
        if bad:
            parts.append(f"{len(bad)} test(s) did not pass: {', '.join(bad)}")
        if report.kernel_log_status == tr.FAIL:
            parts.append(f"{len(splats)} kernel warning(s) (--allow-warnings accepts them)")
        report.reason = "; ".join(parts)
    return report


def write_reports(report: tr.Report, paths: dict, args) -> None:
    tr.write_json(report, paths["json"])
    xml = tr.junit_xml(report, hostname=socket.gethostname())
    tap = tr.tap_text(report)
    paths["junit"].write_bytes(xml)
    paths["tap"].write_text(tap)
    if args.junit:
        args.junit.write_bytes(xml)
    if args.tap:
        args.tap.write_text(tap)
    for user, ours in ((args.trace, paths["trace"]), (args.dtb_out, paths["dtb"]),
                       (args.console_log, paths["console"])):
        if user and ours.exists():
            shutil.copyfile(ours, user)


def print_summary(report: tr.Report, result, out: Path, stream) -> None:
    c, sc = report.counts(), report.subtest_counts()
    w = stream.write
    parts = [f"{c[k]} {label}" for k, label in ((tr.PASS, "passed"), (tr.FAIL, "failed"),
                                                 (tr.TIMEOUT, "timed out"), (tr.SKIP, "skipped"),
                                                 (tr.ERROR, "unfinished")) if c[k]]
    sub = [f"{sc[k]} {k}" for k in (tr.PASS, tr.FAIL, tr.TIMEOUT, tr.SKIP) if sc[k]]
    w(f"\n== gunyah-sim test: {len(report.tests)} test{'' if len(report.tests) == 1 else 's'}: {', '.join(parts) or 'none'}"
      + (f" (subtests: {', '.join(sub)})" if sub else "")
      + (f"; boot {report.boot_seconds:.2f} s" if report.boot_status == tr.PASS
         else "; boot FAILED") + f"; {report.seconds:.1f} s in all\n")
    if report.boot_status != tr.PASS:
        w(f"   FAIL     boot: {report.boot_message.strip().splitlines()[0]}\n")
    for t in report.tests:
        if t.status not in (tr.PASS, tr.SKIP):
            w(f"   {t.status.upper():8} {t.name}: {t.message}\n")
    if report.splats:
        verdict = "accepted (--allow-warnings)" if report.allow_warnings else "FAIL the run"
        w(f"kernel log: {len(report.splats)} warning(s), {verdict}:\n")
        for s in report.splats:
            w(f"   {s.line}" + (f"  (during {s.test})" if s.test else "") + "\n")
    else:
        w("kernel log: no WARN/BUG/Oops/KASAN/lockdep reports\n")
    if report.gunyah:
        w(f"Gunyah driver lines ({len(report.gunyah)}):\n")
        for line in report.gunyah[:20]:
            w(f"   {line}\n")
        if len(report.gunyah) > 20:
            w(f"   ... {len(report.gunyah) - 20} more in kernel.log\n")
    else:
        w("Gunyah driver lines: none in the kernel log\n")
    hv = report.hypervisor
    top = ", ".join(f"{k} {v}" for k, v in list(hv.get("by_call", {}).items())[:6])
    events = ", ".join(e["event"] + (f"(cpu{e['cpu']})" if "cpu" in e else "")
                       for e in hv.get("events", [])) or "none"
    w(f"hypervisor: {hv.get('calls', 0)} trapped calls ({top}); events: {events}\n")
    w(f"artifacts: {out}\n")
    if report.exit_code == 0:
        w("result: PASS\n")
    else:
        w(f"result: FAIL (exit code {report.exit_code}): {report.reason}\n")
    stream.flush()
    if result.guest_status is None and not result.ok:
        print(result.failure_report(), file=sys.stderr)
