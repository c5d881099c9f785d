"""SMC Calling Convention: function IDs and the standard services the guest needs at EL2.

PSCI is forwarded to the platform firmware (QEMU's built-in PSCI) through the shim's SMC, except
CPU_ON, whose entry point is redirected through the shim so that the new CPU enters EL1 with
EL2 configured.  The Arm architecture calls are answered here.  Never claim the Spectre
workaround calls: Linux would then make one on every context switch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import CpuOn, ForwardSmc
from .errors import SMCCC_NOT_SUPPORTED

if TYPE_CHECKING:
    from .hypervisor import CallContext, Hypervisor

FAST = 1 << 31
SMC64 = 1 << 30
OWNER_ARCH = 0
OWNER_STANDARD = 4           # standard secure services: PSCI
OWNER_STANDARD_HYP = 5
OWNER_VENDOR_HYP = 6


def function_id(owner: int, number: int, *, smc64: bool, fast: bool = True) -> int:
    return (FAST if fast else 0) | (SMC64 if smc64 else 0) | (owner << 24) | number


def describe(fid: int) -> str:
    kind = "fast" if fid & FAST else "yielding"
    width = "smc64" if fid & SMC64 else "smc32"
    return f"{kind} {width} owner {(fid >> 24) & 0x3F} number {fid & 0xFFFF:#x}"


SMCCC_VERSION_1_1 = 0x10001


# --- handlers (hv, ctx, *args) -> result registers -------------------------------------------
def smccc_version(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    return (SMCCC_VERSION_1_1,)


def smccc_arch_features(hv: "Hypervisor", ctx: "CallContext", queried: int) -> tuple[int, ...]:
    """Only the architecture calls answered here are reported; the workarounds are not."""
    call = hv.calls.lookup(queried & 0xFFFF_FFFF)
    if call is not None and call.handler in (smccc_version, smccc_arch_features):
        return (0,)
    return (SMCCC_NOT_SUPPORTED,)


def psci_forward(hv: "Hypervisor", ctx: "CallContext", *args: int) -> tuple[int, ...]:
    ctx.actions.append(ForwardSmc())
    return ()


def psci_features(hv: "Hypervisor", ctx: "CallContext", queried: int) -> tuple[int, ...]:
    """Calls answered at EL2 are reported here; the rest is the firmware's to answer.

    Linux reads SMCCC_VERSION only when PSCI_FEATURES reports it, and without SMCCC 1.1 it
    makes no vendor-hypervisor calls at all (so it could never detect Gunyah).
    """
    call = hv.calls.lookup(queried & 0xFFFF_FFFF)
    if call is not None and call.handler is smccc_version:
        return (0,)
    return psci_forward(hv, ctx)


def psci_system_off(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    hv.note_event("system_off", cpu=ctx.exit.cpu)
    return psci_forward(hv, ctx)


def psci_system_reset(hv: "Hypervisor", ctx: "CallContext") -> tuple[int, ...]:
    hv.note_event("system_reset", cpu=ctx.exit.cpu)
    return psci_forward(hv, ctx)


def psci_cpu_on(hv: "Hypervisor", ctx: "CallContext", target: int, entry: int,
                context: int) -> tuple[int, ...]:
    ctx.actions.append(CpuOn(target_mpidr=target, entry=entry, context=context))
    hv.note_event("cpu_on", cpu=ctx.exit.cpu, target=target, entry=entry)
    return ()
