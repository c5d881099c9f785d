"""`gunyah-sim test` without QEMU: TAP, markers, splats, the report writers, the guest runner."""
import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from argparse import Namespace
from pathlib import Path

import pytest

from qemu_bridge import testcmd
from qemu_bridge import testreport as tr


# --- TAP --------------------------------------------------------------------------------------

def test_tap_flat_with_directives():
    doc = tr.parse_tap("TAP version 13\n1..6\nok 1 - first\nnot ok 2 second\n"
                       "ok 3 third # SKIP no hardware\nnot ok 4 fourth # TODO not yet\n"
                       "ok 5 # SKIP kselftest puts the reason here\n"
                       "not ok 6 slow # TIMEOUT 45 seconds\n")
    got = [(s.number, s.name, s.status) for s in doc.results]
    assert got == [(1, "first", "pass"), (2, "second", "fail"), (3, "third", "skip"),
                   (4, "fourth", "skip"), (5, "kselftest puts the reason here", "skip"),
                   (6, "slow", "timeout")]
    assert doc.plan == 6
    assert doc.results[2].message == "no hardware"
    assert doc.results[3].message == "TODO not yet"


def test_tap_unnumbered_and_skip_variants():
    doc = tr.parse_tap("1..3\nok\nok - b # skipped: reason\nnot ok c # xfail known bug\n")
    assert [(s.number, s.name, s.status) for s in doc.results] == [
        (1, "1", "pass"), (2, "b", "skip"), (3, "c", "pass")]


def test_tap_nested_kselftest_and_tap14():
    kselftest = """TAP version 13
1..2
# timeout set to 45
# selftests: gunyah: msgq
# TAP version 13
# 1..2
# ok 1 send
# not ok 2 recv
not ok 1 selftests: gunyah: msgq # exit=1
# selftests: gunyah: rm
ok 2 selftests: gunyah: rm
"""
    doc = tr.parse_tap(kselftest)
    assert [s.status for s in doc.results] == ["fail", "pass"]
    msgq = doc.results[0]
    assert msgq.name == "selftests: gunyah: msgq # exit=1"
    assert [(s.name, s.status) for s in msgq.subtests] == [("send", "pass"), ("recv", "fail")]
    assert doc.results[1].subtests == []           # diagnostics only: no nested TAP
    tap14 = "TAP version 14\n1..1\n    1..2\n    ok 1 - a\n        1..1\n        ok 1 - deep\n" \
            "    ok 2 - b # SKIP\nok 1 - outer\n"
    outer = tr.parse_tap(tap14).results[0]
    assert [s.name for s in outer.subtests] == ["a", "b"]
    assert outer.subtests[1].status == "skip"
    names = [n for n, _ in tr.flatten([outer], "dir/test")]
    # TAP 14: a nested block comes before the result line it belongs to ("deep" is b's)
    assert names == ["dir/test/outer", "dir/test/outer/a", "dir/test/outer/b",
                     "dir/test/outer/b/deep"]


def test_tap_detection():
    assert not tr.looks_like_tap("ok, this is just output\nall ok\n")
    assert not tr.looks_like_tap("1..3\nno results at all\n")
    assert tr.looks_like_tap("1..1\nok 1 x\n")


def _result(output, rc=0):
    r = tr.TestResult(id=1, name="d/t", kind="file", status="pass" if rc == 0 else "fail",
                      exit_code=rc, output=output)
    tr.apply_tap(r)
    return r


def test_apply_tap_fails_on_failed_missing_or_bailed_subtests():
    assert _result("1..2\nok 1 a\nok 2 b\n").status == "pass"
    r = _result("1..2\nok 1 a\nnot ok 2 b\n")
    assert r.status == "fail" and "b" in r.message
    r = _result("1..3\nok 1 a\nok 2 b\n")
    assert r.status == "fail" and "plan 1..3" in r.message
    r = _result("1..2\nok 1 a\nBail out! no device\n")
    assert r.status == "fail" and "no device" in r.message
    r = _result("1..2\nok 1 a\nnot ok 2 b\n", rc=1)
    assert r.status == "fail" and r.message.endswith("subtests failed: b")


# --- markers ----------------------------------------------------------------------------------

def _specs():
    return [tr.TestSpec(1, "d/ok", "file", ["./ok"], "/gsim/tests/d", 30),
            tr.TestSpec(2, "d/hang", "file", ["./hang"], "/gsim/tests/d", 5),
            tr.TestSpec(3, "exec-1", "exec", ["sh", "/gsim/exec/1.sh"], "/root", 30, "true"),
            tr.TestSpec(4, "exec-2", "exec", ["sh", "/gsim/exec/2.sh"], "/root", 30, "false")]


CONSOLE = """[    1.0] Run /init as init process\r\r
GSIM-INIT-READY-0123abcd\r\r
GSIM-TEST-tok begin tests=4\r\r
GSIM-TEST-tok start id=1\r\r
[    2.0] WARNING: CPU: 0 PID: 1 at drivers/foo.c:12 foo+0x1/0x2\r\r
GSIM-TEST-tok out-begin id=1\r\r
TAP version 13\r\r
1..2\r\r
ok 1 a\r\r
ok 2 b # SKIP nope\r\r
BUG: this is the test's own output, not the kernel's\r\r
GSIM-TEST-tok out-end id=1\r\r
GSIM-TEST-tok end id=1 rc=0 timedout=0 ms=120\r\r
GSIM-TEST-other start id=2\r\r
GSIM-TEST-tok start id=2\r\r
GSIM-TEST-tok out-begin id=2\r\r
no newline at the endGSIM-TEST-tok out-end id=2\r\r
GSIM-TEST-tok end id=2 rc=143 timedout=1 ms=5010\r\r
GSIM-TEST-tok start id=3\r\r
GSIM-TEST-tok out-begin id=3\r\r
GSIM-TEST-tok out-end id=3\r\r
GSIM-TEST-tok end id=3 rc=4 timedout=0 ms=0\r\r
GSIM-TEST-tok start id=4\r\r
[    9.0] Unable to handle kernel NULL pointer dereference at virtual address 0\r\r
"""


def test_marker_parser_builds_results_and_attributes_kernel_lines():
    p = tr.MarkerParser("tok", _specs())
    events = p.feed_text(CONSOLE)
    assert events[0] == ("ready",)
    assert ("start", 1) in events and ("end", 2) in events and ("done",) not in events
    r = p.results
    assert (r[1].status, r[1].exit_code, r[1].duration) == ("pass", 0, 0.12)
    assert [s.status for s in r[1].subtests] == ["pass", "skip"]
    assert "BUG: this is the test's own output" in r[1].output
    assert r[2].status == "timeout" and "5 s" in r[2].message
    assert r[2].output == "no newline at the end\n"
    assert r[3].status == "skip"                       # exit code 4: kselftest skip
    assert p.current == 4 and r[4].started
    p.finalize("guest kernel panic")
    assert r[4].status == "error" and r[4].message == "guest kernel panic"
    splats = tr.find_splats(p.kernel_lines)
    assert [(s.test, s.line[:20]) for s in splats] == [
        ("d/ok", "WARNING: CPU: 0 PID:"), ("exec-2", "Unable to handle ker")]
    assert p.dmesg is None and "Run /init" in p.kernel_log()


def test_marker_parser_unstarted_tests_are_not_run_and_dmesg_is_kept():
    p = tr.MarkerParser("tok", _specs())
    p.feed_text("GSIM-INIT-READY-1\nGSIM-TEST-tok dmesg-begin\n[ 1.0] hello\n"
                "GSIM-TEST-tok dmesg-end\nGSIM-TEST-tok done\n")
    assert p.done and p.dmesg == ["[ 1.0] hello"]
    assert p.kernel_log() == "[ 1.0] hello\n"
    p.finalize("boot timed out")
    assert all(r.status == "skip" and r.message.startswith("not run") for r in p.results.values())


# --- splats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "[   12.345678] WARNING: CPU: 1 PID: 77 at kernel/locking/lockdep.c:123 foo+0x10/0x20",
    "[    1.0] WARNING: possible circular locking dependency detected",
    "[    1.0] WARNING: possible recursive locking detected",
    "[    1.0] WARNING: suspicious RCU usage",
    "[    1.0] BUG: KASAN: slab-use-after-free in gh_rm_call+0x10/0x20",
    "[    1.0] BUG: sleeping function called from invalid context at mm/slab.h:1",
    "[    1.0] kernel BUG at drivers/virt/gunyah/rsc_mgr.c:42!",
    "[    1.0] Internal error: Oops: 0000000096000004 [#1] PREEMPT SMP",
    "[    1.0] Unable to handle kernel paging request at virtual address dead",
    "[    1.0] UBSAN: array-index-out-of-bounds in foo.c:1:2",
    "[    1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
    "[    1.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
    "[    1.0] INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
    "[    1.0] Kernel panic - not syncing: Fatal exception",
])
def test_splats_found(line):
    assert [s.line for s in tr.find_splats([line])] == [tr.strip_time(line).strip()]


@pytest.mark.parametrize("line", [
    "[    0.0] Booting Linux on physical CPU 0x0000000000 [0x411fd070]",
    "[    1.0] gunyah: Gunyah hypervisor detected",
    "[    1.0] ---[ end Kernel panic - not syncing: Fatal exception ]---",
    "[    1.0] debug_objects: BUGS found? none",
    "[    1.0] ------------[ cut here ]------------",
])
def test_no_false_splats(line):
    assert tr.find_splats([line]) == []


def test_splats_dedupe_and_merge():
    a = tr.find_splats([tr.ConsoleLine("[ 1.0] WARNING: CPU: 0 PID: 1 at x", "d/t"),
                        tr.ConsoleLine("[ 1.0] WARNING: CPU: 0 PID: 1 at x", "d/t")])
    b = tr.find_splats(["[ 1.0] WARNING: CPU: 0 PID: 1 at x", "[ 2.0] BUG: KASAN: oob"])
    merged = tr.merge_splats(a, b)
    assert [(s.line, s.test) for s in merged] == [("WARNING: CPU: 0 PID: 1 at x", "d/t"),
                                                  ("BUG: KASAN: oob", None)]


def test_gunyah_lines_and_hypervisor_summary():
    log = "[ 1.0] gunyah_rsc_mgr hypervisor:gunyah-resource-mgr@0: probed\n[ 1.1] other\n" \
          "[ 1.2] gh_msgq: registered\n"
    assert tr.gunyah_lines(log) == ["gunyah_rsc_mgr hypervisor:gunyah-resource-mgr@0: probed",
                                    "gh_msgq: registered"]
    trace = [json.dumps({"t": 0, "cpu": 0, "call": "psci_version"}),
             json.dumps({"t": 0, "cpu": 0, "call": "psci_features"}),
             json.dumps({"t": 0, "cpu": 0, "call": "psci_features"}),
             json.dumps({"t": 1, "event": "system_off", "cpu": 0}), "not json"]
    hv = tr.hypervisor_summary(trace)
    assert hv["calls"] == 3 and list(hv["by_call"]) == ["psci_features", "psci_version"]
    assert [e["event"] for e in hv["events"]] == ["system_off"]


# --- writers ----------------------------------------------------------------------------------

def _report(**kw):
    p = tr.MarkerParser("tok", _specs())
    p.feed_text(CONSOLE)
    p.finalize("guest kernel panic")
    splats = tr.find_splats(p.kernel_lines)
    results = [p.results[i] for i in sorted(p.results)]
    results[0].output += "control \x01 char\n"
    return tr.Report(tests=results, boot_seconds=1.5, splats=splats, seconds=9.0,
                     started="2026-01-01T00:00:00+00:00", properties={"kernel": "/k/Image"},
                     **kw)


ALLOWED = {"testsuites": {"testsuite"},
           "testsuite": {"properties", "testcase", "system-out", "system-err"},
           "properties": {"property"}, "property": set(),
           "testcase": {"failure", "error", "skipped", "system-out", "system-err"},
           "failure": set(), "error": set(), "skipped": set(), "system-out": set(),
           "system-err": set()}


def _check_junit(xml: bytes) -> ET.Element:
    """The structure of the common JUnit schema (Jenkins/Ant), checked element by element."""
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    for el in root.iter():
        assert {c.tag for c in el} <= ALLOWED[el.tag], el.tag
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in root.findall("testsuite"):
        for attr in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp"):
            assert suite.get(attr) is not None, attr
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(suite.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
        assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
        for c in cases:
            assert c.get("name") and c.get("classname") is not None
            float(c.get("time"))
            assert sum(c.find(t) is not None for t in ("failure", "error", "skipped")) <= 1
        for k in totals:
            totals[k] += int(suite.get(k))
    for k, v in totals.items():
        assert int(root.get(k)) == v
    return root


def test_junit_is_valid_and_complete():
    report = _report()
    root = _check_junit(tr.junit_xml(report))
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["gunyah-sim", "d", "d/ok"]
    main = {c.get("name"): c for c in suites["gunyah-sim"].findall("testcase")}
    assert list(main) == ["boot", "exec-1", "exec-2", "kernel-log"]
    assert main["exec-1"].find("skipped") is not None
    assert main["exec-2"].find("error").get("message") == "guest kernel panic"
    assert main["kernel-log"].find("failure") is not None
    assert "WARNING: CPU: 0" in main["kernel-log"].find("system-out").text
    d = {c.get("name"): c for c in suites["d"].findall("testcase")}
    assert d["hang"].find("failure").get("type") == "timeout"
    assert "\\x01" in d["ok"].find("system-out").text          # control char made visible
    subs = [(c.get("name"), c.find("skipped") is not None) for c in suites["d/ok"]]
    assert subs == [("a", False), ("b", True)]
    allowed = _check_junit(tr.junit_xml(_report(allow_warnings=True)))
    kl = [c for c in allowed.iter("testcase") if c.get("name") == "kernel-log"][0]
    assert kl.find("failure") is None and "WARNING" in kl.find("system-out").text


def test_tap_report_parses_back():
    report = _report()
    text = tr.tap_text(report)
    doc = tr.parse_tap(text)
    assert doc.plan == len(doc.results) == 2 + len(report.tests)
    got = {s.name: s.status for s in doc.results}
    assert got == {"boot": "pass", "d/ok": "pass", "d/hang": "fail", "exec-1": "skip",
                   "exec-2": "fail", "kernel-log": "fail"}
    assert [s.status for s in doc.results[1].subtests] == ["pass", "skip"]
    assert "  message: \"test d/hang timed out after 5 s (killed)\"" in text


def test_json_report(tmp_path):
    report = _report()
    report.exit_code = 1
    tr.write_json(report, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["total"] == 4 and data["summary"]["timeout"] == 1
    assert data["tests"][0]["subtests"][1]["status"] == "skip"
    assert data["kernel_warnings"]["status"] == "fail"
    assert data["kernel_warnings"]["splats"][0]["test"] == "d/ok"
    assert not report.all_passed()


# --- the guest runner, run on the host's sh ---------------------------------------------------

@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")
def test_runner_script_runs_times_out_and_continues(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok").write_text("#!/bin/sh\necho out; echo err >&2\n")
    (d / "hang").write_text("#!/bin/sh\necho hanging\nsleep 67\n")
    (d / "skip").write_text("#!/bin/sh\nprintf 'no newline'\nexit 4\n")
    for f in d.iterdir():
        f.chmod(0o755)
    specs = [tr.TestSpec(1, "d/hang", "file", ["./hang"], str(d), 1),
             tr.TestSpec(2, "d/ok", "file", ["./ok"], str(d), 10),
             tr.TestSpec(3, "d/skip", "file", ["./skip"], str(d), 10),
             tr.TestSpec(4, "exec-1", "exec", ["sh", "-c", "exit 7"], str(tmp_path), 10)]
    script = tmp_path / "runner.sh"
    script.write_text(tr.runner_script("T0K", specs))
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GSIM_TEST_WORK": str(tmp_path / "w")})
    assert proc.returncode == 0, proc.stderr
    p = tr.MarkerParser("T0K", specs)
    p.feed("GSIM-INIT-READY-00")
    p.feed_text(proc.stdout)
    r = p.results
    assert p.done and p.dmesg is not None
    # killed at its 1 s timeout: it did not run its 67 s to the end
    assert r[1].status == "timeout" and r[1].output == "hanging\n" and 0.9 <= r[1].duration < 60
    assert r[2].status == "pass" and r[2].output == "out\nerr\n"
    assert r[3].status == "skip" and r[3].output == "no newline\n"
    assert r[4].status == "fail" and r[4].exit_code == 7
    # the whole process group of the hung test was killed, not just its shell
    assert subprocess.run(["pgrep", "-x", "-f", "sleep 67"], capture_output=True).stdout == b""


# --- the command's pieces ---------------------------------------------------------------------

def test_discover_names_settings_and_executables(tmp_path):
    a, b = tmp_path / "x" / "suite", tmp_path / "y" / "suite"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "t1").write_text("#!/bin/sh\n")
        (d / "t1").chmod(0o755)
        (d / "data.txt").write_text("not a test")
        (d / ".hidden").write_text("#!/bin/sh\n")
        (d / ".hidden").chmod(0o755)
    (b / "settings").write_text("timeout=7\n")
    specs, named = testcmd.discover([a, b], ["echo hi"], 30.0)
    assert [n for _, n in named] == ["suite", "suite-2"]
    assert [(s.name, s.timeout, s.cwd) for s in specs] == [
        ("suite/t1", 30.0, "/gsim/tests/suite"), ("suite-2/t1", 7.0, "/gsim/tests/suite-2"),
        ("exec-1", 30.0, "/root")]
    root = tmp_path / "stage"
    testcmd.stage_overlay(root, named, specs, "tok", tmp_path / "nowhere")
    assert (root / "gsim/tests/suite-2/t1").stat().st_mode & 0o111
    assert (root / "gsim/exec/1.sh").read_text() == "echo hi\n"
    runner = (root / "gsim/runner.sh").read_text()
    assert "run_test 3 30 /root sh /gsim/exec/1.sh" in runner
    assert subprocess.run(["sh", "-n", str(root / "gsim/runner.sh")]).returncode == 0


def test_reproducer_is_valid_shell_with_absolute_paths(tmp_path):
    args = Namespace(exec_cmds=["echo 'quoted' \"x\"; exit 1"], smp=2, memory=512,
                     cpu="cortex-a57", abi="v6", transport="shm", boot_timeout=60.0,
                     test_timeout=5.0, append="quiet loglevel=3", timeout=None,
                     allow_warnings=True)
    text = testcmd.reproducer_text(args, Path("/k/Image"), ["suite"], ["1-ovl"],
                                   [Path("/src/suite")])
    script = tmp_path / "reproducer.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    fake = tmp_path / "echo-args.sh"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n")
    fake.chmod(0o755)
    body = text.replace(text.split("exec ", 1)[1].split(" ", 1)[0], str(fake), 1)
    script.write_text(body)
    out = subprocess.run(["sh", str(script), "-o", "X"], capture_output=True, text=True).stdout
    words = [l[1:-1] for l in out.splitlines()]
    assert words[:3] == ["test", "--kernel", "/k/Image"]
    assert words[words.index("--tests") + 1] == f"{tmp_path}/tests/suite"
    assert words[words.index("--exec") + 1] == "echo 'quoted' \"x\"; exit 1"
    assert words[words.index("--append") + 1] == "quiet loglevel=3"
    assert "--allow-warnings" in words and words[-2:] == ["-o", "X"]


def test_cli_registers_test_with_shared_options(tmp_path):
    from qemu_bridge.cli import build_parser
    args = build_parser().parse_args(["test", "--tests", str(tmp_path), "--exec", "true",
                                      "--smp", "2", "--abi", "v6", "--boot-timeout", "9"])
    assert args.func is testcmd.cmd_test
    assert args.timeout is None and args.test_timeout == 45.0 and args.boot_timeout == 9.0
    assert args.smp == 2 and args.tests == [tmp_path] and args.exec_cmds == ["true"]


def test_watch_enforces_boot_and_test_deadlines(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("booting\n")
    specs = _specs()
    progress = testcmd.Progress(open(os.devnull, "w"), time.monotonic(), live=False, quiet=True)
    w = testcmd.Watch(log, tr.MarkerParser("tok", specs), specs, progress, boot_timeout=10)
    assert w() is None
    w.t0 -= 11
    assert "boot timed out after 10 s" in w()
    w = testcmd.Watch(log, tr.MarkerParser("tok", specs), specs, progress, boot_timeout=10)
    with log.open("a") as f:
        f.write("GSIM-INIT-READY-1\r\r\nGSIM-TEST-tok start id=2\r\r\n")
    assert w() is None and w.parser.current == 2
    w.test_t0 -= 5 + testcmd.GRACE + 1
    reason = w()
    assert reason.startswith("test d/hang timed out after 5 s") and w.failed_phase == "test"
    w.close()
