"""The hypercall table: one row per call.  It drives dispatch, trace decoding and docs/abi.md.

A row names the call, its SMCCC function ID(s), the registers it reads (x1 onwards) and writes
(x0 onwards), which Linux driver generations issue it, and the handler.  A handler receives the
hypervisor, the call context and one argument per named input register, and returns the values
of the named result registers (result registers it does not return keep the guest's values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import identify, msgq, smccc
from .smccc import OWNER_ARCH, OWNER_STANDARD, OWNER_STANDARD_HYP, OWNER_VENDOR_HYP, function_id

BOTH = ("v6", "v17")
SMCCC = "Arm SMCCC (DEN0028)"
PSCI = "Arm PSCI (DEN0022)"


@dataclass(frozen=True)
class Call:
    name: str
    fids: tuple[int, ...]
    args: tuple[str, ...]
    results: tuple[str, ...]
    handler: Callable
    abis: tuple[str, ...] = BOTH     # driver generations that issue it
    doc: str = ""
    source: str = ""                 # where the ID and registers come from (docs/abi.md names)

    @property
    def fid(self) -> int:
        return self.fids[0]


def _arch(n: int) -> tuple[int, ...]:
    return (function_id(OWNER_ARCH, n, smc64=False),)


def _psci(n: int, both_widths: bool = False) -> tuple[int, ...]:
    ids = (function_id(OWNER_STANDARD, n, smc64=False),)
    if both_widths:
        ids = (function_id(OWNER_STANDARD, n, smc64=True),) + ids
    return ids


def _service(number: int) -> tuple[int, ...]:
    return tuple(function_id(owner, number, smc64=False)
                 for owner in (OWNER_VENDOR_HYP, OWNER_STANDARD_HYP))


def gunyah_hypercall(number: int) -> tuple[int, ...]:
    """Gunyah hypercalls: fast SMC64 vendor-hypervisor calls, call type 2 (bit 15 set)."""
    return (function_id(OWNER_VENDOR_HYP, 0x8000 | number, smc64=True),)


CALLS: tuple[Call, ...] = (
    # Arm architecture calls (SMCCC)
    Call("smccc_version", _arch(0x0000), (), ("version",), smccc.smccc_version,
         doc="SMCCC version: 1.1", source=SMCCC),
    Call("smccc_arch_features", _arch(0x0001), ("function_id",), ("status",),
         smccc.smccc_arch_features, doc="only the calls answered here; no Spectre workarounds",
         source=SMCCC),
    # PSCI, forwarded to QEMU's firmware PSCI through the shim (CPU_ON redirected)
    Call("psci_version", _psci(0x00), (), ("version",), smccc.psci_forward, source=PSCI),
    Call("psci_cpu_suspend", _psci(0x01, True), ("power_state", "entry", "context"),
         ("status",), smccc.psci_forward, source=PSCI),
    Call("psci_cpu_off", _psci(0x02), (), ("status",), smccc.psci_forward, source=PSCI),
    Call("psci_cpu_on", _psci(0x03, True), ("target_mpidr", "entry", "context"), ("status",),
         smccc.psci_cpu_on, doc="entry redirected through the shim so the CPU enters EL1",
         source=PSCI),
    Call("psci_affinity_info", _psci(0x04, True), ("target", "level"), ("state",),
         smccc.psci_forward, source=PSCI),
    Call("psci_migrate_info_type", _psci(0x06), (), ("type",), smccc.psci_forward, source=PSCI),
    Call("psci_system_off", _psci(0x08), (), (), smccc.psci_system_off, source=PSCI),
    Call("psci_system_reset", _psci(0x09), (), (), smccc.psci_system_reset, source=PSCI),
    Call("psci_features", _psci(0x0A), ("function_id",), ("status",), smccc.psci_features,
         source=PSCI),
    # Service calls: the real hypervisor answers them on the vendor- and standard-hypervisor
    # owners alike
    Call("hyp_call_uid", _service(0xFF01), (), ("uid0", "uid1", "uid2", "uid3"),
         identify.vendor_hyp_call_uid, doc="Gunyah's UID, encoded per --abi",
         source="abi.md 5.1: HYP smccc_hypercalls.c; v6-06; v17-04"),
    Call("hyp_revision", _service(0xFF03), (), ("api_info",), identify.vendor_hyp_revision,
         abis=(),
         doc="answers hyp_identify's api_info", source="abi.md 3: HYP smccc_hypercalls.c"),
    # Gunyah hypercalls
    Call("hyp_identify", gunyah_hypercall(0x00), (),
         ("api_info", "flags0", "flags1", "flags2"), identify.hyp_identify,
         source="abi.md 3, 5.2: HYP api hypercalls.hvc; v17-04"),
    Call("msgq_send", gunyah_hypercall(0x1B), ("capid", "size", "data", "send_flags"),
         ("error", "ready"), msgq.hvc_msgq_send, doc="data: a VA of the caller",
         source="abi.md 3, 6: HYP msgqueue.hvc; v6-08; v17-06"),
    Call("msgq_recv", gunyah_hypercall(0x1C), ("capid", "buffer", "buf_size"),
         ("error", "size", "ready"), msgq.hvc_msgq_recv, doc="buffer: a VA of the caller",
         source="abi.md 3, 6: HYP msgqueue.hvc; v6-08; v17-06"),
)


class CallTable:
    def __init__(self, calls: tuple[Call, ...] = CALLS):
        self.calls = calls
        self._by_fid: dict[int, Call] = {}
        for call in calls:
            for fid in call.fids:
                if fid in self._by_fid:
                    raise ValueError(f"{fid:#x} is both {self._by_fid[fid].name} and {call.name}")
                self._by_fid[fid] = call

    def lookup(self, fid: int) -> Call | None:
        return self._by_fid.get(fid)

    def by_name(self, name: str) -> Call:
        for call in self.calls:
            if call.name == name:
                return call
        raise KeyError(name)


def markdown_table(calls: tuple[Call, ...] = CALLS) -> str:
    """The table docs/abi.md carries (regenerated by scripts/gen-docs)."""
    rows = ["| Call | Function ID(s) | Inputs (x1..) | Results (x0..) | Issued by drivers | Notes "
            "| Source |", "|---|---|---|---|---|---|---|"]
    for c in calls:
        ids = ", ".join(f"`{f:#010x}`" for f in c.fids)
        rows.append(f"| {c.name} | {ids} | {', '.join(c.args) or '-'} | "
                    f"{', '.join(c.results) or '-'} | {', '.join(c.abis) or '-'} | {c.doc} | "
                    f"{c.source} |")
    return "\n".join(rows) + "\n"
