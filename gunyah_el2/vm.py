"""Secondary VMs that really run: vCPUs scheduled by the hypervisor on the CPUs it reserved.

The v6 model: the primary's VMM lends memory and asks the RM to start the VM; from then on
the hypervisor runs the VM's vCPUs itself.  Here a vCPU runs on a physical CPU that the primary
VM does not know about (the DT does not list it).  Such a CPU waits in the shim (an IDLE exit
that is left unanswered) until this module answers it with "load this EL1 context and stage-2
table, and eret into the VM".  The VM's traps then arrive like the primary's, on that CPU's
mailbox.  Each running vCPU keeps its CPU: with more vCPUs than reserved CPUs the later ones
wait for a CPU to become free (no time slicing yet).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import identify, stage2
from .vgic import VGic
from .backend import EC_HVC64, EC_SMC64, MASK64, Reply, VcpuExit
from .errors import SMCCC_NOT_SUPPORTED

if TYPE_CHECKING:
    from .hypervisor import Hypervisor

log = logging.getLogger("gunyah_sim.vm")

# HCR_EL2 for a VM's vCPU: stage 2 on, EL1 AArch64, SMCs trapped, pointer auth not trapped.
HCR_RW, HCR_TSC, HCR_VM, HCR_APK, HCR_API = 1 << 31, 1 << 19, 1 << 0, 1 << 40, 1 << 41
HCR_IMO = 1 << 4            # physical IRQs go to EL2 while the VM runs: the kick
HCR_PRIMARY = HCR_RW | HCR_TSC | HCR_APK | HCR_API
HCR_GUEST_VM = HCR_PRIMARY | HCR_VM | HCR_IMO

# The VM's virtual timer fires physical PPI 27 on its CPU; list-register bits to inject it.
VTIMER_INTID = 27
CNTV_ENABLE, CNTV_IMASK = 1, 2
LR_PENDING, LR_GROUP1 = 1 << 62, 1 << 60

# One SPI per reserved CPU, routed to it, makes a running vCPU trap to EL2 (stop, preempt).
KICK_SPI_BASE = 208          # SPIs 208..215 (INTIDs 240..247), one per possible CPU
SPSR_EL1H_MASKED = 0x3C5
SCTLR_EL1_RESET = 0x30D0_0800

EC_DABT_LOW, EC_IABT_LOW, EC_WFX, EC_SYSREG = 0x24, 0x20, 0x01, 0x18
ICC_SGI1R_EL1 = (3, 0, 12, 11, 5)      # (op0, op1, CRn, CRm, op2): traps with HCR_EL2.IMO
EC_DABT_CUR, EC_IABT_CUR = 0x25, 0x21

# Where a VM's memory starts in its IPA space unless its DT says otherwise (the v6 sample
# VMM's default guest base).
DEFAULT_IPA_BASE = 0x8000_0000

PRIMARY_S2_VMID = 3         # the primary VM's VMID, as the RM numbers it

# The VM's emulated devices (its DT describes them): one PL011 UART.
UART_IPA, UART_SIZE = 0x0900_0000, 0x1000
PL011_DR, PL011_FR = 0x00, 0x18
PL011_FR_TXFE = 1 << 7

PSCI_VERSION, PSCI_CPU_OFF, PSCI_CPU_ON, PSCI_AFFINITY_INFO = (0x84000000, 0x84000002,
                                                                0xC4000003, 0xC4000004)
PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_FEATURES = 0x84000008, 0x84000009, 0x8400000A
PSCI_SUCCESS, PSCI_INVALID, PSCI_ALREADY_ON = 0, -2, -4


@dataclass(frozen=True)
class EnterVcpu:
    """Load this EL1 context (and HCR/VTTBR/VTCR) on the CPU, then eret into the vCPU."""
    context: dict


@dataclass(frozen=True)
class ReturnToIdle:
    """Leave the VM: restore the host's EL2 configuration and wait for work again."""


@dataclass(frozen=True)
class WriteEl1:
    """Write EL1 system registers of the vCPU on this CPU (e.g. to inject an abort)."""
    values: dict


@dataclass(frozen=True)
class InvalidateVmTlb:
    """TLBI VMALLS12E1IS for the VMID now in VTTBR_EL2."""


@dataclass(frozen=True)
class PrepareKick:
    """Wake this CPU's GIC redistributor and enable its CPU interface at EL2, so that a kick
    SPI can reach it."""


@dataclass(frozen=True)
class Kick:
    """Route the CPU's kick SPI to it and make it pending (a running vCPU traps to EL2)."""
    cpu: int





def inject_abort(exit_: VcpuExit, ec_same_el: int) -> Reply:
    """Deliver a synchronous external abort to the trapping EL1 (as a stray access deserves).

    `ec_same_el` is the exception class for an abort taken from EL1 (0x25 data, 0x21
    instruction); from EL0 the class is one less.  The guest resumes at its VBAR_EL1 vector.
    """
    from_el0 = (exit_.spsr & 0xF) == 0
    esr = (ec_same_el - (1 if from_el0 else 0)) << 26 | (1 << 25) | 0x10   # IL, external abort
    vector = exit_.vbar + (0x400 if from_el0 else 0x200)
    return Reply(x=list(exit_.x), pc=vector, spsr=SPSR_EL1H_MASKED,
                 actions=[WriteEl1({"esr_el1": esr, "far_el1": exit_.far,
                                    "elr_el1": exit_.elr, "spsr_el1": exit_.spsr})])


@dataclass(eq=False)              # identity: vCPUs are kept in sets and queues
class Vcpu:
    vm: "VmRuntime"
    index: int
    regs: list = field(default_factory=lambda: [0] * 31)
    pc: int = 0
    spsr: int = SPSR_EL1H_MASKED
    state: str = "off"            # off, runnable, running
    cpu: int | None = None
    el1: dict | None = None       # saved EL1 state of a vCPU that was switched out
    since: float = 0.0            # when it got its CPU (time slicing)
    pending_sgis: set = field(default_factory=set)     # SGIs sent to it, not yet injected

    def context(self) -> dict:
        el1 = self.el1 or {"sctlr_el1": SCTLR_EL1_RESET}
        context = {reg: el1.get(reg, 0) for reg in EL1_STATE}
        context.update({"vmpidr_el2": (1 << 31) | self.index, "hcr_el2": HCR_GUEST_VM,
                        "vttbr_el2": self.vm.s2.vttbr, "vtcr_el2": stage2.VTCR})
        return context


# A vCPU's own EL1 state, in the order the shim loads it (qemu_bridge/mailbox.py).
EL1_STATE = ("sctlr_el1", "ttbr0_el1", "ttbr1_el1", "tcr_el1", "mair_el1", "amair_el1",
             "vbar_el1", "cpacr_el1", "contextidr_el1", "tpidr_el1", "tpidr_el0", "tpidrro_el0",
             "sp_el0", "sp_el1", "elr_el1", "spsr_el1", "cntkctl_el1", "cntv_cval_el0",
             "cntv_ctl_el0")
TIME_SLICE_S = 0.02


@dataclass
class VmRuntime:
    vmid: int
    s2: stage2.Stage2
    vcpus: list
    state: str = "running"        # running, stopping (vCPUs still on CPUs), exited
    exit_reason: str = ""
    report_exit: bool = True
    console: bytearray = field(default_factory=bytearray)
    vgic: VGic | None = None


class VmManager:
    def __init__(self, hv: "Hypervisor"):
        self.hv = hv
        self.vms: dict[int, VmRuntime] = {}
        self.reserved: list[int] = []            # physical CPUs the primary does not see
        self.idle: set[int] = set()              # reserved CPUs waiting (IDLE exit parked)
        self.running: dict[int, Vcpu] = {}       # physical CPU -> vCPU on it
        self.runnable: list[Vcpu] = []
        self.outbox: list[tuple[int, Reply]] = []     # answers for parked CPUs
        self.preempting: set = set()                   # vCPUs kicked to end their slice
        self.pages: stage2.PageAllocator | None = None
        self.primary_s2: stage2.Stage2 | None = None
        self.on_exit: Callable[[VmRuntime], None] = lambda vm: None
        self.console_sink: Callable[[int, str], None] = \
            lambda vmid, line: log.info("vm%d: %s", vmid, line)

    def configure(self, reserved_cpus: list[int], hyp_memory: tuple[int, int],
                  ram: tuple[int, int]) -> None:
        """Which CPUs and which memory (base, size) the hypervisor keeps for itself.

        The primary VM then runs under stage 2 too, mapped 1:1 except the hypervisor's memory,
        so that a page it lends really leaves it (and comes back on reclaim).
        """
        self.reserved = list(reserved_cpus)
        be = self.hv.backend
        self.pages = stage2.PageAllocator(hyp_memory[0], hyp_memory[1], be.write_phys)
        s2 = stage2.Stage2(PRIMARY_S2_VMID, self.pages, be.read_phys, be.write_phys)
        ram_base, ram_size = ram
        gib = 1 << 30
        for block in range(0, 1 << stage2.IPA_BITS, gib):     # devices: everything but RAM
            if block + gib <= ram_base or block >= ram_base + ram_size:
                s2.map(block, block, gib, device=True)
        s2.map(ram_base, ram_base, hyp_memory[0] - ram_base)
        self.primary_s2 = s2

    def primary_unmap(self, ranges: list[tuple[int, int]]) -> None:
        """Lent or donated pages leave the primary's address space (TLBs: the caller's reply)."""
        if self.primary_s2 is not None:
            for base, size in ranges:
                self.primary_s2.unmap(base, size)

    def primary_map(self, ranges: list[tuple[int, int]]) -> None:
        if self.primary_s2 is not None:
            for base, size in ranges:
                self.primary_s2.map(base, base, size)

    # --- lifecycle -----------------------------------------------------------------------------
    def create(self, vmid: int, regions: list[tuple[int, int, int]], entry: int, x0: int,
               ncpus: int = 1) -> VmRuntime:
        """Build the VM's stage 2 from (ipa, pa, size) regions and make vCPU 0 runnable."""
        if self.pages is None:
            raise RuntimeError("no CPUs or memory are reserved for VMs (see --vm-cpus)")
        if vmid in self.vms and self.vms[vmid].state == "running":
            raise ValueError(f"VM {vmid} is already running")
        be = self.hv.backend
        s2 = stage2.Stage2(vmid, self.pages, be.read_phys, be.write_phys)
        for ipa, pa, size in regions:
            s2.map(ipa, pa, size)
        vm = VmRuntime(vmid, s2, [], vgic=VGic(ncpus))
        vm.vcpus = [Vcpu(vm, i) for i in range(ncpus)]
        self.vms[vmid] = vm
        boot = vm.vcpus[0]
        boot.pc, boot.regs[0] = entry, x0
        self._make_runnable(boot)
        self.hv.note_event("vm_start", vmid=vmid, entry=entry, vcpus=ncpus)
        return vm

    def stop(self, vmid: int, reason: str, report: bool = True) -> None:
        """Stop the VM: vCPUs waiting for a CPU are dropped, running ones are kicked off their
        CPUs.  The VM has exited (on_exit, when `report`) once the last one has left."""
        vm = self.vms.get(vmid)
        if vm is None or vm.state != "running":
            return
        vm.exit_reason, vm.report_exit = reason, report
        for vcpu in vm.vcpus:
            if vcpu.state == "runnable":
                self.runnable.remove(vcpu)
                vcpu.state = "off"
            elif vcpu.state == "running":
                self.kick(vcpu.cpu)
        vm.state = "stopping"
        self._finish_if_stopped(vm)

    def _finish_if_stopped(self, vm: VmRuntime) -> None:
        if vm.state != "stopping" or any(v.state == "running" for v in vm.vcpus):
            return
        vm.state = "exited"
        self._flush_console(vm)
        self.hv.note_event("vm_exit", vmid=vm.vmid, reason=vm.exit_reason)
        if vm.report_exit:
            self.on_exit(vm)

    # --- scheduling ----------------------------------------------------------------------------
    def _make_runnable(self, vcpu: Vcpu) -> None:
        vcpu.state = "runnable"
        self.runnable.append(vcpu)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.runnable and self.idle:
            cpu = min(self.idle)
            self.idle.discard(cpu)
            self.outbox.append((cpu, self._assign(self.runnable.pop(0), cpu)))

    def _assign(self, vcpu: Vcpu, cpu: int) -> Reply:
        """The reply that makes physical CPU `cpu` run `vcpu`."""
        vcpu.state, vcpu.cpu, vcpu.since = "running", cpu, time.monotonic()
        self.running[cpu] = vcpu
        fresh = {"ich_hcr_el2": 1}
        if vcpu.el1 is None:                   # a vCPU's first run: a clean GIC and timer
            fresh.update({"ich_vmcr_el2": 0, "ich_lr0_el2": 0, "ich_lr1_el2": 0,
                          "ich_lr2_el2": 0, "ich_lr3_el2": 0, "cntv_ctl_el0": 0})
        actions = [PrepareKick(), EnterVcpu(vcpu.context()), WriteEl1(fresh)]
        if vcpu.pending_sgis:                  # sent while it waited for a CPU: they go in on
            actions.append(Kick(cpu))          # its first IRQ exit
        log.info("vm%d vcpu%d runs on cpu%d at %#x", vcpu.vm.vmid, vcpu.index, cpu, vcpu.pc)
        return Reply(x=list(vcpu.regs), pc=vcpu.pc, spsr=vcpu.spsr, actions=actions)

    def handle_idle(self, exit_: VcpuExit) -> Reply | None:
        """A reserved CPU asks for work: answer now if a vCPU waits, else leave it parked."""
        self.idle.add(exit_.cpu)
        self._dispatch()
        for i, (cpu, reply) in enumerate(self.outbox):
            if cpu == exit_.cpu:
                del self.outbox[i]
                return reply
        return None

    def tick(self) -> None:
        """Called now and then: a vCPU waits for a CPU while others used theirs for a whole
        time slice, so kick the longest-running one off (it goes to the back of the queue)."""
        if not self.runnable or self.preempting:
            return
        now = time.monotonic()
        due = [v for v in self.running.values() if now - v.since >= TIME_SLICE_S]
        if due:
            victim = min(due, key=lambda v: v.since)
            self.preempting.add(victim)
            self.kick(victim.cpu)

    def fail(self, exit_: VcpuExit) -> Reply:
        """After an internal error on this CPU: stop its VM and send the CPU back to idle."""
        vcpu = self.running.get(exit_.cpu)
        if vcpu is None:
            return Reply(x=list(exit_.x), pc=exit_.elr, actions=[ReturnToIdle()])
        reply = self._leave(exit_, vcpu)
        self.stop(vcpu.vm.vmid, "internal error in the hypervisor")
        return reply

    def kick(self, cpu: int) -> None:
        """Make the vCPU on `cpu` trap: with the current call's reply, or right away."""
        if not self.hv.add_call_action(Kick(cpu)):
            self.hv.backend.kick_async(cpu)

    def handle_irq(self, exit_: VcpuExit) -> Reply:
        """A physical interrupt (already acknowledged by the shim) while a vCPU ran here: the
        hypervisor's kick, or the VM's own virtual timer, which becomes a virtual interrupt."""
        vcpu = self.running.get(exit_.cpu)
        if vcpu is None or vcpu.vm.state != "running":
            self.hv.tracer.event("vcpu_kicked", cpu=exit_.cpu, intid=exit_.intid)
            if vcpu is None:
                return Reply(x=list(exit_.x), pc=exit_.elr, actions=[ReturnToIdle()])
            return self._leave(exit_, vcpu)
        if vcpu in self.preempting:                # its time slice is over: switch it out
            self.preempting.discard(vcpu)
            if self.runnable:
                reply = self._leave(exit_, vcpu)
                vcpu.regs, vcpu.pc, vcpu.spsr = list(exit_.x), exit_.elr, exit_.spsr
                vcpu.el1 = dict(exit_.el1 or {})
                self.hv.note_event("vcpu_preempted", vmid=vcpu.vm.vmid, vcpu=vcpu.index,
                                     cpu=exit_.cpu)
                self._make_runnable(vcpu)          # to the back of the queue
                return reply
        reply = Reply(x=list(exit_.x), pc=exit_.elr)
        values = {}
        if exit_.intid == VTIMER_INTID:
            # Mask the timer until the guest reprograms it (Linux clears IMASK when it sets the
            # next event), and hand the guest a virtual timer interrupt through a list register.
            values["cntv_ctl_el0"] = CNTV_ENABLE | CNTV_IMASK
            if vcpu.vm.vgic.ppi_enabled(vcpu.index, VTIMER_INTID):
                values["ich_lr0_el2"] = LR_PENDING | LR_GROUP1 | (0xA0 << 48) | VTIMER_INTID
        if vcpu.pending_sgis:
            free = (exit_.el1 or {}).get("ich_elrsr_el2", 0)
            if self._inject_sgis(vcpu, free, values):
                reply.actions.append(Kick(exit_.cpu))      # no free list register: try again
        if values:
            reply.actions.append(WriteEl1(values))
        return reply

    def take_outbox(self) -> list[tuple[int, Reply]]:
        out, self.outbox = self.outbox, []
        return out

    def owns(self, cpu: int) -> bool:
        return cpu in self.running

    def _leave(self, exit_: VcpuExit, vcpu: Vcpu) -> Reply:
        """Take the vCPU off its CPU and send the CPU back to waiting for work."""
        self.running.pop(exit_.cpu, None)
        vcpu.state, vcpu.cpu = "off", None
        self._finish_if_stopped(vcpu.vm)
        return Reply(x=list(exit_.x), pc=exit_.elr, actions=[ReturnToIdle()])

    # --- the VM's traps ------------------------------------------------------------------------
    def handle_exit(self, exit_: VcpuExit) -> Reply:
        vcpu = self.running[exit_.cpu]
        vm = vcpu.vm
        if vm.state != "running":
            return self._leave(exit_, vcpu)
        ec = exit_.ec
        if ec in (EC_HVC64, EC_SMC64):
            return self._call(exit_, vcpu)
        if ec == EC_DABT_LOW:
            return self._data_abort(exit_, vcpu)
        if ec == EC_WFX:
            return Reply(x=list(exit_.x), pc=exit_.elr + 4)
        if ec == EC_SYSREG:
            return self._sysreg(exit_, vcpu)
        if ec == EC_IABT_LOW:
            return self._inject_abort(exit_, EC_IABT_CUR, "instruction abort outside its memory")
        log.error("vm%d: unhandled exit EC %#x at %#x: stopping the VM", vm.vmid, ec, exit_.elr)
        reply = self._leave(exit_, vcpu)
        self.stop(vm.vmid, f"unhandled exit EC {ec:#x}")
        return reply

    def _call(self, exit_: VcpuExit, vcpu: Vcpu) -> Reply:
        """PSCI is the hypervisor's own for VMs (its vCPUs are virtual); the rest is shared."""
        started = time.perf_counter()
        vm, fid, x = vcpu.vm, exit_.x[0] & 0xFFFF_FFFF, list(exit_.x)
        reply = Reply(x=x, pc=exit_.next_pc)
        if fid in (PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET):
            reply = self._leave(exit_, vcpu)
            self.stop(vm.vmid, "powered off" if fid == PSCI_SYSTEM_OFF else "reset")
            return reply
        if fid == PSCI_CPU_OFF:
            reply = self._leave(exit_, vcpu)
            if all(v.state == "off" for v in vm.vcpus):
                self.stop(vm.vmid, "all vCPUs off")
            return reply
        if fid == PSCI_VERSION:
            x[0] = 0x10001
        elif fid == PSCI_FEATURES:
            x[0] = 0 if (exit_.x[1] & 0xFFFF_FFFF) in (PSCI_CPU_ON, PSCI_CPU_OFF, PSCI_VERSION,
                                                       PSCI_SYSTEM_OFF, PSCI_AFFINITY_INFO) \
                else SMCCC_NOT_SUPPORTED & MASK64
        elif fid == PSCI_CPU_ON:
            x[0] = self._cpu_on(vm, exit_.x[1] & 0xFF, exit_.x[2], exit_.x[3]) & MASK64
        elif fid == PSCI_AFFINITY_INFO:
            target = exit_.x[1] & 0xFF
            x[0] = (0 if vm.vcpus[target].state != "off" else 1) if target < len(vm.vcpus) \
                else PSCI_INVALID & MASK64
        else:
            call = self.hv.calls.lookup(fid)
            if call is not None and call.handler in (identify.vendor_hyp_call_uid,
                                                     identify.hyp_identify,
                                                     identify.vendor_hyp_revision) \
                    or fid in (0x80000000, 0x80000001):
                return self.hv.dispatch_call(exit_)
            x[0] = SMCCC_NOT_SUPPORTED & MASK64
        self.hv.tracer.call(exit_, f"vm{vm.vmid}_call", {"fid": fid}, {"x0": x[0]}, started)
        return reply

    def _sysreg(self, exit_: VcpuExit, vcpu: Vcpu) -> Reply:
        """A trapped system-register access: SGIs the vCPU sends; anything else reads 0."""
        iss = exit_.esr & 0x1FF_FFFF
        op0, op2, op1 = (iss >> 20) & 3, (iss >> 17) & 7, (iss >> 14) & 7
        crn, rt, crm, read = (iss >> 10) & 0xF, (iss >> 5) & 0x1F, (iss >> 1) & 0xF, iss & 1
        x = list(exit_.x)
        reply = Reply(x=x, pc=exit_.elr + 4)
        if (op0, op1, crn, crm, op2) == ICC_SGI1R_EL1 and not read:
            value = 0 if rt == 31 else exit_.x[rt]
            intid, aff1 = (value >> 24) & 0xF, (value >> 16) & 0xFF
            if value >> 40 & 1:                     # IRM: every vCPU but the sender
                targets = [v for v in vcpu.vm.vcpus if v is not vcpu]
            else:
                targets = [v for v in vcpu.vm.vcpus
                           if aff1 == 0 and value >> v.index & 1]
            for target in targets:
                target.pending_sgis.add(intid)
                if target.state == "running":       # it takes them on its next IRQ exit
                    reply.actions.append(Kick(target.cpu))
        elif read and rt != 31:
            x[rt] = 0
        return reply

    def _inject_sgis(self, vcpu: Vcpu, free_lrs: int, values: dict) -> bool:
        """Put pending SGIs into free list registers 1..3; True if some are still pending."""
        for lr in (1, 2, 3):
            if not vcpu.pending_sgis:
                break
            if free_lrs >> lr & 1:
                intid = min(vcpu.pending_sgis)
                vcpu.pending_sgis.discard(intid)
                values[f"ich_lr{lr}_el2"] = LR_PENDING | LR_GROUP1 | (0xA0 << 48) | intid
        return bool(vcpu.pending_sgis)

    def _cpu_on(self, vm: VmRuntime, target: int, entry: int, context: int) -> int:
        if target >= len(vm.vcpus):
            return PSCI_INVALID
        vcpu = vm.vcpus[target]
        if vcpu.state != "off":
            return PSCI_ALREADY_ON
        vcpu.regs = [0] * 31
        vcpu.regs[0], vcpu.pc, vcpu.spsr, vcpu.el1 = context, entry, SPSR_EL1H_MASKED, None
        self._make_runnable(vcpu)
        return PSCI_SUCCESS

    def _data_abort(self, exit_: VcpuExit, vcpu: Vcpu) -> Reply:
        ipa = ((exit_.hpfar >> 4) << 12) | (exit_.far & 0xFFF)
        iss = exit_.esr & 0x1FF_FFFF
        vgic = vcpu.vm.vgic
        if iss & (1 << 24) and vgic.owns(ipa, len(vcpu.vm.vcpus)):
            size, srt, write = 1 << ((iss >> 22) & 3), (iss >> 16) & 0x1F, bool(iss & (1 << 6))
            x = list(exit_.x)
            if write:
                vgic.write(ipa, size, 0 if srt == 31 else exit_.x[srt])
            elif srt != 31:
                x[srt] = vgic.read(ipa, size)
            return Reply(x=x, pc=exit_.elr + 4)
        if UART_IPA <= ipa < UART_IPA + UART_SIZE and iss & (1 << 24):   # ISV: decodable
            srt, write = (iss >> 16) & 0x1F, bool(iss & (1 << 6))
            x = list(exit_.x)
            offset = ipa - UART_IPA
            if write and offset == PL011_DR and srt != 31:
                self._console_byte(vcpu.vm, exit_.x[srt] & 0xFF)
            elif not write and srt != 31:
                x[srt] = PL011_FR_TXFE if offset == PL011_FR else 0
            return Reply(x=x, pc=exit_.elr + 4)
        return self._inject_abort(exit_, EC_DABT_CUR, f"access to IPA {ipa:#x} outside its memory")

    def _inject_abort(self, exit_: VcpuExit, ec: int, why: str) -> Reply:
        vm = self.running[exit_.cpu].vm
        self.hv.note_event("vm_fault", vmid=vm.vmid, pc=exit_.elr, far=exit_.far, why=why)
        return inject_abort(exit_, ec)

    # --- console -------------------------------------------------------------------------------
    def _console_byte(self, vm: VmRuntime, byte: int) -> None:
        if byte == 0x0A:
            self._flush_console(vm)
        elif byte != 0x0D:
            vm.console.append(byte)

    def _flush_console(self, vm: VmRuntime) -> None:
        if vm.console:
            self.console_sink(vm.vmid, vm.console.decode(errors="replace"))
            vm.console.clear()
