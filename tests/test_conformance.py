"""The conformance suites, end to end through QEMU, for both driver generations."""
import pytest

from conftest import gunyah_sim
from gunyah_el2 import identify
from qemu_bridge.conformance import SUITES, parse_tap, run_suite

pytestmark = pytest.mark.qemu

MIN_CASES = {"hypercalls": 25, "msgq": 25, "rm": 25, "vm": 30, "linux": 20}


@pytest.mark.parametrize("abi", ["v6", "v17"])
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_passes(suite, abi, no_leftovers):
    result = run_suite(SUITES[suite], abi)
    failed = [f"{c.name}: {c.diagnostics}" for c in result.cases if not c.passed]
    assert result.problem is None, result.problem + "\n" + result.output[-2000:]
    assert failed == []
    assert len(result.cases) >= MIN_CASES[suite]


def test_suites_detect_a_wrong_uid(monkeypatch):
    """The suite is not a rubber stamp: serve v6's UID to a v17 check and it must fail."""
    monkeypatch.setattr(identify, "uid_registers", lambda abi: identify.V6_GUNYAH_UID)
    result = run_suite(SUITES["hypercalls"], "v17")
    failed = [c.name for c in result.cases if not c.passed]
    assert any("UID" in name for name in failed)
    assert not result.passed


def test_msgq_suite_over_gdb_transport(no_leftovers):
    result = run_suite(SUITES["msgq"], "v17", transport="gdb")
    assert result.passed, [c.name for c in result.cases if not c.passed]


def test_cli_writes_tap_and_junit(tmp_path, no_leftovers):
    tap, junit = tmp_path / "c.tap", tmp_path / "c.xml"
    p = gunyah_sim("conformance", "--suite", "msgq", "--abi", "v6", "--tap", str(tap),
                   "--junit", str(junit))
    assert p.returncode == 0, p.stdout + p.stderr
    cases, plan, bailed = parse_tap(tap.read_text())
    assert plan == len(cases) >= MIN_CASES["msgq"] and all(c.passed for c in cases)
    import xml.etree.ElementTree as ET
    root = ET.parse(junit).getroot()
    assert root.find("testsuite").get("name") == "msgq.v6"
    assert int(root.find("testsuite").get("failures")) == 0
    assert gunyah_sim("conformance", "--list").stdout.count("\n") == len(SUITES)


def test_parse_tap_reads_failures_skips_and_plan():
    cases, plan, bailed = parse_tap("TAP version 13\nok 1 - a\nnot ok 2 - b\n# got: 0x1\n"
                                    "ok 3 - c # SKIP no cpu\n1..3\n")
    assert plan == 3 and not bailed
    assert [(c.name, c.passed, c.skipped) for c in cases] == [
        ("a", True, False), ("b", False, False), ("c", True, True)]
    assert cases[1].diagnostics == ["got: 0x1"]
