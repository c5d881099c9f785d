"""End to end: `gunyah-sim test` boots the real kernel once and runs a tests directory."""
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, gunyah_sim

pytestmark = pytest.mark.qemu

TESTS = {
    "pass": "#!/bin/sh\necho hello from pass\n",
    "fail": "#!/bin/sh\necho about to fail >&2\nexit 3\n",
    "tap": "#!/bin/sh\necho 'TAP version 13'\necho 1..3\necho 'ok 1 first'\n"
           "echo 'not ok 2 second'\necho 'ok 3 third # SKIP no hardware'\nexit 1\n",
    "hang": "#!/bin/sh\necho hanging\nsleep 600\n",     # sorted before pass and tap
}
WARN = 'echo "WARNING: CPU: 0 PID: 1 at test" > /dev/kmsg'


@pytest.fixture
def suite(tmp_path):
    d = tmp_path / "suite"
    d.mkdir()
    for name, body in TESTS.items():
        (d / name).write_text(body)
        (d / name).chmod(0o755)
    (d / "README").write_text("not executable: not a test\n")
    return d


def statuses(out: Path) -> dict:
    data = json.loads((out / "results.json").read_text())
    return {t["name"]: (t["status"], t["exit_code"], [(s["name"], s["status"])
                                                     for s in t["subtests"]])
            for t in data["tests"]}


EXPECTED = {
    "suite/fail": ("fail", 3, []),
    "suite/hang": ("timeout", 143, []),
    "suite/pass": ("pass", 0, []),
    "suite/tap": ("fail", 1, [("first", "pass"), ("second", "fail"), ("third", "skip")]),
    "exec-1": ("pass", 0, []),
}


def test_suite_reports_and_reproducer(suite, tmp_path, no_leftovers):
    out = tmp_path / "artifacts"
    junit = tmp_path / "junit-copy.xml"
    p = gunyah_sim("test", "--tests", str(suite), "--exec", "uname -m", "--test-timeout", "3",
                   "-o", str(out), "--junit", str(junit))
    assert p.returncode == 1, p.stdout + p.stderr      # no_leftovers: staging dir removed too
    for name in ("console.log", "kernel.log", "trace.jsonl", "guest.dtb", "results.json",
                 "junit.xml", "results.tap", "reproducer.sh", "tests/suite/tap"):
        assert (out / name).exists(), name
    assert statuses(out) == EXPECTED
    # progress lines (not a TTY: plain) and the summary
    assert "TIMEOUT  suite/hang" in p.stdout and "PASS     suite/pass" in p.stdout
    assert "test suite/hang timed out after 3 s" in p.stdout
    assert "hello from pass" not in p.stdout            # console not streamed without -v
    assert "hypervisor:" in p.stdout and "psci_system_off" in p.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["boot"]["status"] == "pass" and data["kernel_warnings"]["splats"] == []
    assert "about to fail" in [t for t in data["tests"] if t["name"] == "suite/fail"][0]["output"]
    assert "aarch64" in [t for t in data["tests"] if t["name"] == "exec-1"][0]["output"]

    root = ET.parse(junit).getroot()
    assert junit.read_bytes() == (out / "junit.xml").read_bytes()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("10", "4", "1")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert cases[("suite", "hang")].find("failure").get("type") == "timeout"
    assert cases[("suite", "pass")].find("failure") is None
    assert cases[("suite/tap", "third")].find("skipped") is not None
    assert cases[("suite/tap", "second")].find("failure") is not None

    tap = (out / "results.tap").read_text().splitlines()
    assert tap[:2] == ["TAP version 13", "1..7"]
    assert "ok 1 - boot" in tap and "not ok 2 - suite/fail" in tap and "ok 4 - suite/pass" in tap
    assert "    ok 3 - third # SKIP no hardware" in tap and "ok 7 - kernel-log" in tap

    # the reproducer runs the same thing again from its own copy of the tests
    (suite / "pass").write_text("#!/bin/sh\nexit 1\n")       # the original changes: no matter
    out2 = tmp_path / "rerun"
    r = subprocess.run([str(out / "reproducer.sh"), "-o", str(out2)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(out2) == EXPECTED


def test_kernel_warning_fails_the_run_unless_allowed(tmp_path, no_leftovers):
    p = gunyah_sim("test", "--exec", WARN, "-o", str(tmp_path / "a"))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "WARNING: CPU: 0 PID: 1 at test  (during exec-1)" in p.stdout
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert data["tests"][0]["status"] == "pass"
    assert data["kernel_warnings"]["status"] == "fail"
    assert "WARNING: CPU: 0 PID: 1 at test" in (tmp_path / "a" / "kernel.log").read_text()
    p = gunyah_sim("test", "--exec", WARN, "--allow-warnings", "-o", str(tmp_path / "b"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted (--allow-warnings)" in p.stdout and "result: PASS" in p.stdout


def test_boot_timeout_is_reported_as_the_boot_phase(tmp_path, no_leftovers):
    p = gunyah_sim("test", "--exec", "true", "--boot-timeout", "0.5", "-o", str(tmp_path / "o"))
    assert p.returncode == 124, p.stdout + p.stderr
    assert "boot timed out after 0.5 s" in p.stdout
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["boot"]["status"] == "fail" and data["tests"][0]["status"] == "skip"
