"""Dispatch, SMCCC/PSCI and detection on the fake backend (the same handlers QEMU runs)."""
import logging
import struct
import uuid

import pytest

from gunyah_el2 import identify
from gunyah_el2.backend import EC_HVC64, EC_SMC64, CpuOn, FakeBackend, ForwardSmc, VcpuExit
from gunyah_el2.calls import CALLS, CallTable, gunyah_hypercall, markdown_table
from gunyah_el2.errors import GunyahError
from gunyah_el2.hypervisor import Hypervisor

MASK = (1 << 64) - 1


def trap(hv, *x, ec=EC_HVC64, cpu=0, elr=0x4000_1000):
    regs = tuple(list(x) + [0] * (8 - len(x)))
    return hv.handle_exit(VcpuExit(cpu=cpu, esr=ec << 26, elr=elr, spsr=0x3C5, x=regs))


def signed(v):
    return v - (1 << 64) if v >> 63 else v


@pytest.fixture
def hv():
    return Hypervisor(FakeBackend())


def test_v17_uid_is_gunyah_uuid_as_linux_v17_reassembles_it():
    hv = Hypervisor(FakeBackend(), abi="v17")
    r = trap(hv, 0x8600FF01)
    raw = struct.pack("<4I", *[v & 0xFFFFFFFF for v in r.x[:4]])
    assert uuid.UUID(bytes=raw) == uuid.UUID("c1d58fcd-a453-5fdb-9265-ce36673d5f14")


def test_v6_uid_matches_v6_word_compare():
    hv = Hypervisor(FakeBackend(), abi="v6")
    r = trap(hv, 0x8600FF01)
    assert tuple(r.x[:4]) == (0x673D5F14, 0x9265CE36, 0xA4535FDB, 0xC1D58FCD)


def test_uid_answers_on_smc_conduit_too_and_skips_the_smc(hv):
    r = trap(hv, 0x8600FF01, ec=EC_SMC64, elr=0x4000_2000)
    assert r.pc == 0x4000_2004          # a trapped SMC reports its own address
    assert r.x[0] == identify.uid_registers("v17")[0]
    r = trap(hv, 0x8600FF01, ec=EC_HVC64, elr=0x4000_2000)
    assert r.pc == 0x4000_2000          # an HVC reports the next instruction


def test_identify_reports_api_v1_64bit_and_msgqueue(hv):
    r = trap(hv, 0xC6008000)
    assert r.x[0] & 0x3FFF == 1 and r.x[0] & (1 << 15)
    assert r.x[1] & (1 << identify.FEATURE_BITS["msgqueue"])


def test_unknown_call_is_not_supported_and_logged_once(hv, caplog):
    caplog.set_level(logging.INFO, logger="gunyah_sim.hyp")
    for _ in range(3):
        r = trap(hv, 0xC600BEEF, 1, 2, 3)
        assert signed(r.x[0]) == -1
        assert r.x[1:4] == [1, 2, 3]     # other registers untouched
    assert sum("0xc600beef" in rec.getMessage() for rec in caplog.records) == 1


def test_smccc_version_and_no_spectre_workarounds(hv):
    assert trap(hv, 0x80000000).x[0] == 0x10001
    for workaround in (0x80008000, 0x80007FFF, 0x80003FFF):
        assert signed(trap(hv, 0x80000001, workaround).x[0]) == -1
    assert trap(hv, 0x80000001, 0x80000000).x[0] == 0


def test_psci_features_reports_smccc_version_and_forwards_the_rest(hv):
    r = trap(hv, 0x8400000A, 0x80000000, ec=EC_SMC64)
    assert r.x[0] == 0 and r.actions == []
    r = trap(hv, 0x8400000A, 0xC4000003, ec=EC_SMC64)
    assert r.actions == [ForwardSmc()] and r.x[:2] == [0x8400000A, 0xC4000003]


def test_psci_cpu_on_is_redirected_not_forwarded_verbatim(hv):
    r = trap(hv, 0xC4000003, 0x1, 0x4120_0000, 0x77, ec=EC_SMC64)
    assert r.actions == [CpuOn(target_mpidr=1, entry=0x4120_0000, context=0x77)]
    assert hv.events[-1]["event"] == "cpu_on"


def test_system_off_is_forwarded_and_noted(hv):
    r = trap(hv, 0x84000008, ec=EC_SMC64)
    assert r.actions == [ForwardSmc()]
    assert [e["event"] for e in hv.events] == ["system_off"]


def test_handler_bug_answers_unimplemented_and_service_survives(hv, monkeypatch):
    def boom(*a):
        raise RuntimeError("bug")
    table = CallTable(tuple(c if c.name != "hyp_identify" else
                            type(c)(c.name, c.fids, c.args, c.results, boom) for c in CALLS))
    hv.calls = table
    r = trap(hv, 0xC6008000)
    assert signed(r.x[0]) == GunyahError.UNIMPLEMENTED
    assert trap(hv, 0x80000000).x[0] == 0x10001


def test_non_call_exit_skips_instruction(hv):
    r = hv.handle_exit(VcpuExit(cpu=0, esr=0x18 << 26, elr=0x1000, spsr=0, x=(0,) * 8))
    assert r.pc == 0x1004


def test_table_has_unique_ids_and_gunyah_ids_match_abi():
    table = CallTable()
    assert table.by_name("hyp_identify").fid == 0xC6008000
    assert table.by_name("msgq_send").fid == 0xC600801B
    assert table.by_name("msgq_recv").fid == 0xC600801C
    assert gunyah_hypercall(0x65) == (0xC6008065,)
    md = markdown_table()
    assert all(c.name in md for c in CALLS)


def test_trace_records_each_call_with_decoded_args(tmp_path):
    from gunyah_el2.trace import Tracer
    import json
    tracer = Tracer(str(tmp_path / "t.jsonl"))
    hv = Hypervisor(FakeBackend(), tracer=tracer)
    trap(hv, 0x8400000A, 0x80000000, ec=EC_SMC64)
    trap(hv, 0xC6008000)
    tracer.close()
    recs = [json.loads(l) for l in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["call"] for r in recs] == ["psci_features", "hyp_identify"]
    assert recs[0]["args"] == {"function_id": 0x80000000} and recs[0]["conduit"] == "smc"
    assert recs[1]["results"]["api_info"] == identify.API_INFO
    assert all(r["py_us"] >= 0 for r in recs)
