"""The Gunyah hypervisor's EL2 policy: every trapped call is dispatched here.

``handle_exit`` takes one :class:`VcpuExit` and returns the :class:`Reply` the vCPU resumes
with.  It never raises: a bad call from the guest gets the error code the real hypervisor
would give, is logged, and leaves the state as it was.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from . import mmu
from .backend import MASK64, Backend, RaiseSpi, Reply, VcpuExit
from .calls import Call, CallTable
from .capabilities import CSPACE_SLOTS, PrimaryVm
from .errors import SMCCC_NOT_SUPPORTED, GunyahError, HypercallFailed
from .trace import Tracer
from . import vm
from .vm import VmManager

log = logging.getLogger("gunyah_sim.hyp")

ABIS = ("v6", "v17")
DEFAULT_ABI = "v17"


@dataclass(slots=True)
class CallContext:
    """What a handler may use: the exit, guest memory through the caller's stage 1, actions."""
    hv: "Hypervisor"
    exit: VcpuExit
    call: Call
    actions: list = field(default_factory=list)

    @property
    def stage1(self) -> mmu.Stage1:
        e = self.exit
        return mmu.Stage1(ttbr0=e.ttbr0, ttbr1=e.ttbr1, tcr=e.tcr, sctlr=e.sctlr)

    def _read_phys(self, addr: int, size: int) -> bytes:
        try:
            return self.hv.backend.read_phys(addr, size)
        except (ValueError, OSError) as err:
            raise HypercallFailed(GunyahError.ADDR_INVAL, str(err)) from None

    def read_guest(self, va: int, size: int) -> bytes:
        return mmu.read_virt(self.stage1, va, size, self._read_phys)

    def write_guest(self, va: int, data: bytes) -> None:
        def write_phys(addr: int, chunk: bytes) -> None:
            try:
                self.hv.backend.write_phys(addr, chunk)
            except (ValueError, OSError) as err:
                raise HypercallFailed(GunyahError.ADDR_INVAL, str(err)) from None
        mmu.write_virt(self.stage1, va, data, self._read_phys, write_phys)


class Hypervisor:
    def __init__(self, backend: Backend, *, abi: str = DEFAULT_ABI, tracer: Tracer | None = None):
        if abi not in ABIS:
            raise ValueError(f"unknown ABI {abi!r}; choose one of {', '.join(ABIS)}")
        self.backend = backend
        self.abi = abi
        self.calls = CallTable()
        self.tracer = tracer or Tracer()
        self.features = ("msgqueue",)          # hyp_identify reports what is implemented
        self.events: list[dict] = []
        self.primary = PrimaryVm(self)
        self.vms = VmManager(self)
        self._unknown_seen: set[int] = set()
        self._in_call = False                # a primary VM call is being handled ...
        self._pending_actions: list = []     # ... and these EL2 actions ride on its reply

    # --- notable events, for the session's report ------------------------------------------
    def note_event(self, name: str, **info) -> None:
        self.events.append({"event": name, **info})
        self.tracer.event(name, **info)

    # --- capability space of the calling VM -------------------------------------------------
    def cspace_lookup(self, ctx: CallContext, capid: int):
        """Resolve a capability ID in the caller's cspace, with the real lookup's errors.

        Capability IDs are slot indices here (the real hypervisor's debug encoding); an ID
        that does not decode to a slot is ARG_INVAL, an empty slot CSPACE_CAP_NULL.
        """
        if not 0 <= capid < CSPACE_SLOTS:
            raise HypercallFailed(GunyahError.ARG_INVAL, f"capid {capid:#x} does not decode")
        cap = self.primary.cspace.get(capid)
        if cap is None:
            raise HypercallFailed(GunyahError.CSPACE_CAP_NULL, f"capid {capid:#x}")
        return cap

    # --- interrupts --------------------------------------------------------------------------
    def add_call_action(self, action) -> bool:
        """Attach an EL2 action to the reply of the primary's call in flight (False: none)."""
        if self._in_call:
            self._pending_actions.append(action)
        return self._in_call

    def raise_spi(self, spi: int) -> None:
        """Raise an SPI: with the current call's reply if one is in flight, else right away."""
        if not self.add_call_action(RaiseSpi(spi)):
            self.backend.raise_spi_async(spi)

    # --- dispatch ----------------------------------------------------------------------------
    def handle_exit(self, exit: VcpuExit) -> Reply:
        """A trap of the primary VM or of a VM's vCPU (by which CPU it came from)."""
        if self.vms.owns(exit.cpu):
            return self._vm_guarded(self.vms.handle_exit, exit)
        return self.dispatch_call(exit)

    def _vm_guarded(self, handler, exit: VcpuExit) -> Reply:
        """A bug in handling a VM's exit stops that VM, never the service or the primary."""
        try:
            return handler(exit)
        except Exception:
            log.exception("cpu%d: handling a VM exit failed; stopping that VM", exit.cpu)
            return self.vms.fail(exit)

    def handle_idle(self, exit: VcpuExit) -> Reply | None:
        """A reserved CPU waits for work; None leaves it waiting (see take_replies)."""
        return self.vms.handle_idle(exit)

    def handle_irq(self, exit: VcpuExit) -> Reply:
        """A physical interrupt taken to EL2 on a CPU running a VM (the hypervisor's kick)."""
        return self._vm_guarded(self.vms.handle_irq, exit)

    def take_replies(self) -> list[tuple[int, Reply]]:
        """Answers for CPUs left waiting earlier (a VM was started for them meanwhile)."""
        return self.vms.take_outbox()

    def dispatch_call(self, exit: VcpuExit) -> Reply:
        started = time.perf_counter()
        reply = Reply(x=list(exit.x), pc=exit.next_pc)
        if exit.ec in (vm.EC_DABT_LOW, vm.EC_IABT_LOW):
            # The primary touched memory it lent away (or the hypervisor's): an abort for it.
            self.note_event("primary_fault", cpu=exit.cpu, pc=exit.elr, far=exit.far)
            log.warning("cpu%d: primary VM access to %#x at %#x faulted at stage 2",
                        exit.cpu, exit.far, exit.elr)
            self.tracer.call(exit, "stage2_fault", {"far": exit.far}, {}, started)
            ec = vm.EC_DABT_CUR if exit.ec == vm.EC_DABT_LOW else vm.EC_IABT_CUR
            return vm.inject_abort(exit, ec)
        if exit.conduit not in ("hvc", "smc"):
            log.error("cpu%d: unhandled exit (ESR %#x at %#x); skipping the instruction",
                      exit.cpu, exit.esr, exit.elr)
            reply.pc = exit.elr + 4
            self.tracer.call(exit, "unhandled_exit", {}, {}, started)
            return reply
        fid = exit.x[0] & 0xFFFF_FFFF
        call = self.calls.lookup(fid)
        if call is None:
            if fid not in self._unknown_seen:
                self._unknown_seen.add(fid)
                # Unknown Gunyah (vendor hypervisor) calls matter to a driver developer; other
                # owners' probes (TRNG, SoC ID, firmware calls) are routine.
                level = logging.WARNING if (fid >> 24) & 0x3F == 6 else logging.INFO
                log.log(level, "cpu%d: unknown %s function ID %#010x: NOT_SUPPORTED "
                        "(logged once)", exit.cpu, exit.conduit, fid)
            reply.x[0] = SMCCC_NOT_SUPPORTED & MASK64
            self.tracer.call(exit, "unknown", {"fid": fid}, {"x0": -1}, started)
            return reply
        ctx = CallContext(self, exit, call)
        args = [exit.x[1 + i] for i in range(len(call.args))]
        self._in_call, self._pending_actions = True, []
        try:
            results = call.handler(self, ctx, *args)
        except HypercallFailed as failure:
            log.info("cpu%d: %s failed: %s", exit.cpu, call.name, failure)
            # x0 carries the error; the call's other result registers read as zero.
            results = (int(failure.error),) + (0,) * (len(call.results) - 1)
        except Exception:                                   # a bug here must not kill the guest
            log.exception("cpu%d: %s handler crashed; answering UNIMPLEMENTED", exit.cpu, call.name)
            results = (int(GunyahError.UNIMPLEMENTED),)
        finally:
            self._in_call = False
        for i, value in enumerate(results):
            reply.x[i] = int(value) & MASK64
        reply.actions = ctx.actions + self._pending_actions
        self.tracer.call(exit, call.name, dict(zip(call.args, args)),
                         dict(zip(call.results, results)), started, actions=reply.actions)
        return reply
