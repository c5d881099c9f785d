"""A run: wires a QEMU machine to the Python hypervisor and watches the guest to its end.

Threads: the *service* thread owns the doorbell (waits for exit records, asks the hypervisor,
writes replies); the calling thread reads the console and decides when the run is over.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pexpect

from dts import generate as dtgen
from guest import build as guest_build
from gunyah_el2 import capabilities, stage2, vm_rm
from gunyah_el2.hypervisor import DEFAULT_ABI, Hypervisor
from gunyah_el2.vm import Kick
from gunyah_el2.trace import Tracer

from . import console as con
from . import exitcodes, mailbox
from .machine import MachineConfig, QemuError, QemuMachine, make_workdir
from .qemu_backend import QemuBackend
from .gdbremote import GdbClosed
from .transport import GdbTransport, ShmTransport, TransportClosed

log = logging.getLogger("gunyah_sim.session")

DEFAULT_BOOTARGS = "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr rdinit=/init"


@dataclass
class RunOptions:
    kernel: Path | None = None           # default: the Debian kernel in the cache
    initrd: Path | None = None           # default: our busybox initramfs
    overlays: list[Path] = field(default_factory=list)
    command: str | None = None           # run in the guest shell; None: interactive shell
    append: str = ""
    smp: int = 1
    memory_mb: int = 512
    cpu: str = "cortex-a57"
    timeout: float = 300.0
    transport: str = "shm"
    abi: str = DEFAULT_ABI
    trace: Path | None = None
    dtb_out: Path | None = None
    console_log: Path | None = None
    quiet: bool = False                  # do not stream the console to stdout
    hypervisor_node: bool = True
    interactive: bool = False
    # polled about twice a second while the guest runs; a returned reason ends the run with
    # exit code 124 (timeout) and that reason (`gunyah-sim test`: per-phase timeouts)
    watchdog: Callable[[], str | None] | None = None
    vm_cpus: int = 0                     # CPUs the hypervisor keeps for VMs' vCPUs (not in
                                         # the primary's DT); needed to run secondary VMs
    extra_loads: list = field(default_factory=list)   # (file, physical address) to load too
    on_hypervisor: Callable | None = None  # called with the Hypervisor before the guest runs
    vm_console_dir: Path | None = None   # one file per VM's console output
    bare_metal: bool = False             # `kernel` is a test payload: no initramfs; it ends
                                         # by powering off, which is then a success
    gdb_port: int | None = None          # --gdb: gdb proxy on 127.0.0.1:PORT (0: a free one)
    pause: bool = False                  # --pause: the guest starts when the user's gdb continues
    vmlinux: Path | None = None          # symbols for backtraces (default: next to the kernel)


@dataclass
class RunResult:
    code: int
    reason: str
    guest_status: int | None = None
    boot_seconds: float | None = None
    seconds: float = 0.0
    hypercalls: int = 0
    console_tail: list[str] = field(default_factory=list)
    trace_tail: str = ""
    events: list[dict] = field(default_factory=list)
    backtrace: str = ""                  # every vCPU's registers/backtrace on a hang or panic

    @property
    def ok(self) -> bool:
        return self.code == 0

    def failure_report(self) -> str:
        lines = [f"gunyah-sim: {self.reason}", "--- last console lines ---"]
        lines += [f"  {line}" for line in self.console_tail] or ["  (none)"]
        lines += ["--- last trapped calls ---", self.trace_tail]
        if self.backtrace:
            lines += ["--- where each vCPU was ---", self.backtrace]
        return "\n".join(lines)


class ServiceThread(threading.Thread):
    """Waits on the doorbell, runs the hypervisor, answers.  Never lets an exception escape."""

    def __init__(self, transport, hv: Hypervisor, backend: QemuBackend, machine: QemuMachine):
        super().__init__(name="gunyah-el2", daemon=True)
        self.transport, self.hv, self.backend, self.machine = transport, hv, backend, machine
        self.stop_requested = threading.Event()
        self.fatal: str | None = None
        self.parked: dict[int, tuple[int, object]] = {}    # cpu -> (seq, idle exit)

    def run(self) -> None:
        try:
            while not self.stop_requested.is_set():
                got = self.transport.wait(0.05)
                if got is None:
                    self.hv.vms.tick()                # time slices of oversubscribed CPUs
                    self._raise_async()
                    continue
                seq, kind, exit_ = got
                if kind == mailbox.KIND_UNEXPECTED:
                    self.fatal = (f"EL2 shim took an unexpected exception on cpu{exit_.cpu}: "
                                  f"vector {exit_.x[0]:#x}, ESR_EL2 {exit_.esr:#x}, "
                                  f"ELR_EL2 {exit_.elr:#x}")
                    return
                if kind == mailbox.KIND_IRQ:
                    exit_.el1 = self.backend.saved_el1(exit_.cpu)
                    reply = self.hv.handle_irq(exit_)
                elif kind == mailbox.KIND_IDLE:
                    reply = self.hv.handle_idle(exit_)
                    if reply is None:                 # nothing to run: the CPU keeps waiting
                        self.parked[exit_.cpu] = (seq, exit_)
                        self.transport.park(exit_.cpu)
                        continue
                    # It may already sleep in WFI (it spins only briefly): wake it too.
                    self.backend.kick_async(exit_.cpu)
                else:
                    reply = self.hv.handle_exit(exit_)
                # Answers for CPUs that were waiting (a VM was started meanwhile) go first;
                # the kick that wakes them from WFI rides on this CPU's reply.
                for cpu, later in self.hv.take_replies():
                    pseq, pexit = self.parked.pop(cpu)
                    self.transport.reply(cpu, self.backend.encode(later, pexit), pseq)
                    reply.actions.append(Kick(cpu))
                self.transport.reply(exit_.cpu, self.backend.encode(reply, exit_), seq)
                self.hv.vms.tick()
                self._raise_async()
        except (TransportClosed, GdbClosed):       # QEMU went away: the run is over
            pass
        except Exception as err:                          # report, do not hang the guest silently
            if self.machine.alive():
                log.exception("EL2 service failed")
                self.fatal = f"internal error in the EL2 service: {err!r}"

    def _raise_async(self) -> None:
        """Interrupts raised outside a call: set them pending through the transport."""
        writes = self.backend.async_writes()
        if writes:
            self.transport.write_async(writes)


HYP_MEMORY_SIZE = 16 << 20      # top of RAM kept by the hypervisor (stage-2 tables) for VMs


def hyp_memory(opts: RunOptions) -> tuple[int, int]:
    return mailbox.RAM_BASE + (opts.memory_mb << 20) - HYP_MEMORY_SIZE, HYP_MEMORY_SIZE


def _vm_console_sink(opts: RunOptions, sink):
    """VM console lines go to the console stream, prefixed, and to --vm-console DIR/vmN.log."""
    def emit(vmid: int, line: str) -> None:
        sink.write_line(f"[vm{vmid}] {line}")
        if opts.vm_console_dir is not None:
            opts.vm_console_dir.mkdir(parents=True, exist_ok=True)
            with open(opts.vm_console_dir / f"vm{vmid}.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")
    return emit


def build_dtb(machine: QemuMachine, opts: RunOptions, bootargs: str) -> tuple[bytes, dict]:
    base = machine.dump_dtb()
    rm = None
    if opts.hypervisor_node:
        rm = dtgen.RmNodeSpec(tx_capid=capabilities.RM_TX.capid, rx_capid=capabilities.RM_RX.capid,
                              tx_spi=capabilities.RM_TX.spi, rx_spi=capabilities.RM_RX.spi)
    reserved = [("gunyah-sim-el2", mailbox.RAM_BASE, mailbox.RESERVED_END - mailbox.RAM_BASE)]
    if opts.vm_cpus:
        reserved.append(("gunyah-sim-hyp", *hyp_memory(opts)))
    dtb = dtgen.build_guest_dt(base, reserved=reserved, bootargs=bootargs, abi=opts.abi, rm=rm,
                               primary_cpus=opts.smp)
    import fdt
    return dtb, dtgen.platform_addresses(fdt.parse_dtb(dtb))


def run(opts: RunOptions) -> RunResult:
    started = time.monotonic()
    workdir = make_workdir()
    tracer = Tracer(str(opts.trace) if opts.trace else None)
    sink = con.stdout_sink(opts.quiet, str(opts.console_log) if opts.console_log else None)
    machine: QemuMachine | None = None
    service: ServiceThread | None = None
    proxy = None
    result: RunResult
    try:
        listener = None
        if opts.gdb_port is not None:
            from . import gdbproxy
            try:
                listener = gdbproxy.listen(opts.gdb_port)
            except OSError as err:
                return RunResult(exitcodes.USAGE,
                                 f"--gdb: cannot listen on 127.0.0.1:{opts.gdb_port}: {err}")
        shim = guest_build.build_shim()
        kernel = opts.kernel or guest_build.default_kernel()
        token = secrets.token_hex(4)
        if opts.initrd is not None or opts.bare_metal:
            initrd = opts.initrd
        else:
            base = guest_build.build_base_initramfs()
            command = None if opts.interactive else (opts.command or "uname -a")
            initrd = guest_build.build_run_initramfs(base, workdir / "initramfs.cpio",
                                                     command=command, token=token,
                                                     overlays=opts.overlays)
        bootargs = DEFAULT_BOOTARGS + (" " + opts.append if opts.append else "")
        ncpus = opts.smp + opts.vm_cpus
        config = MachineConfig(smp=ncpus, memory_mb=opts.memory_mb, cpu=opts.cpu,
                               shared_ram=opts.transport == "shm")
        machine = QemuMachine(config, workdir)
        dtb, platform = build_dtb(machine, opts, bootargs)
        dtb_path = workdir / "guest.dtb"
        dtb_path.write_bytes(dtb)
        if opts.dtb_out:
            shutil.copyfile(dtb_path, opts.dtb_out)
        machine.start(shim=shim.binary, dtb=dtb_path, initrd=initrd,
                      loads=[(kernel, mailbox.GUEST_LOAD_ADDR), *opts.extra_loads],
                      logfile=sink)
        if opts.transport == "shm":
            transport = ShmTransport(machine.ram, ncpus, machine.gdb)
        else:
            transport = GdbTransport(machine.gdb, ncpus, shim.symbol("doorbell"),
                                     opts.memory_mb << 20)
        backend = QemuBackend(transport, platform["gicd"], shim.symbol("secondary_entry"),
                              platform["gicr"])
        hv = Hypervisor(backend, abi=opts.abi, tracer=tracer)
        transport.write_boot_slot(0, mailbox.GUEST_LOAD_ADDR, 0)
        reserved = list(range(opts.smp, ncpus))
        if reserved:
            transport.write_phys(mailbox.mailbox_address(0) + mailbox.BOOT_RESERVED_MASK,
                                 struct.pack("<Q", sum(1 << c for c in reserved)))
            for cpu in reserved:
                transport.write_phys(mailbox.mailbox_address(cpu) + mailbox.BOOT_GICR_FRAME,
                                     struct.pack("<Q", platform["gicr"] + 0x20000 * cpu))
            hv.vms.configure(reserved, hyp_memory(opts),
                             (mailbox.RAM_BASE, opts.memory_mb << 20))
            backend.primary_stage2 = (hv.vms.primary_s2.vttbr, stage2.VTCR)
            transport.write_phys(mailbox.mailbox_address(0) + mailbox.BOOT_VTTBR,
                                 struct.pack("<QQ", *backend.primary_stage2))
            hv.vms.console_sink = _vm_console_sink(opts, sink)
        vm_rm.attach(hv)
        if opts.on_hypervisor is not None:
            opts.on_hypervisor(hv)
        if opts.bare_metal:
            transport.write_phys(mailbox.PAYLOAD_PARAMS, mailbox.payload_params(
                opts.abi, opts.smp, platform["gicd"], platform["gicr"], platform["uart"]))
        service = ServiceThread(transport, hv, backend, machine)
        if listener is not None:
            proxy = gdbproxy.GdbProxy(machine.gdb, listener, held=opts.pause,
                                      reserved_cpus=range(opts.smp, ncpus))
            listener = None
            vmlinux = _vmlinux(opts) or "vmlinux"
            print(f"gunyah-sim: gdb proxy on 127.0.0.1:{proxy.port}"
                  + ("; the guest is paused until gdb continues it" if opts.pause else "")
                  + f"; attach with: {gdbproxy.attach_hint(proxy.port, vmlinux)}",
                  file=sys.stderr, flush=True)
        service.start()
        if not opts.pause:
            machine.resume()
        if proxy is not None:
            proxy.start()              # after the resume: a gdb that attaches stops a running guest
        if opts.interactive:
            result = _interact(machine, sink)
        else:
            result = _watch(machine, service, token, opts, started,
                            installed_initrd=opts.initrd is None and not opts.bare_metal,
                            proxy=proxy)
            if result.code in (exitcodes.TIMEOUT, exitcodes.PANIC) and machine.alive():
                service.stop_requested.set()        # the stub is ours alone from here
                service.transport.interrupted = True
                service.join(2.0)
                from . import backtrace
                result.backtrace = backtrace.report(machine.gdb, vmlinux=_vmlinux(opts),
                                                    proxy=proxy,
                                                    reserved_cpus=range(opts.smp, ncpus))
        result.hypercalls = tracer.count
        result.events = hv.events
    except guest_build.AssetError as err:
        result = RunResult(exitcodes.SETUP, str(err))
    except QemuError as err:
        result = RunResult(exitcodes.QEMU, str(err))
    except KeyboardInterrupt:
        result = RunResult(exitcodes.INTERRUPTED, "interrupted (Ctrl-C); QEMU stopped")
    finally:
        if listener is not None:
            listener.close()
        if proxy is not None:
            proxy.close()
        if service is not None:
            service.stop_requested.set()
            service.transport.interrupted = True
        if machine is not None:
            machine.shutdown()
        if service is not None:
            service.join(2.0)
        tracer.close()
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    result.console_tail = sink.tail(20)
    result.trace_tail = tracer.format_recent(10)
    return result


def _vmlinux(opts: RunOptions) -> Path | None:
    from .backtrace import find_vmlinux
    return find_vmlinux(opts.kernel, opts.vmlinux)


def _watch(machine: QemuMachine, service: ServiceThread, token: str, opts: RunOptions,
           started: float, installed_initrd: bool,
           proxy=None) -> RunResult:
    child = machine.child
    deadline = started + opts.timeout
    patterns = [con.exit_marker(token), con.ready_marker(token), *con.PANIC_PATTERNS,
                pexpect.EOF, pexpect.TIMEOUT]
    boot_seconds = None
    while True:
        if service.fatal:
            return RunResult(exitcodes.INTERNAL, service.fatal, boot_seconds=boot_seconds)
        # time the user's gdb (--gdb) held the guest stopped does not count; nor is the
        # watchdog asked while it holds it
        held = proxy.held_seconds() if proxy is not None else 0.0
        if opts.watchdog is not None and not (proxy is not None and proxy.held):
            reason = opts.watchdog()
            if reason:
                return RunResult(exitcodes.TIMEOUT, reason, boot_seconds=boot_seconds)
        remaining = deadline + held - time.monotonic()
        if remaining <= 0:
            return RunResult(exitcodes.TIMEOUT,
                             f"timeout: the guest did not finish within {opts.timeout:g} s"
                             + ("" if boot_seconds else " (it never reached init)"),
                             boot_seconds=boot_seconds)
        index = child.expect(patterns, timeout=min(0.5, remaining))
        if index == 0:
            status = int(child.match.group(1))
            _wait_exit(machine, 20.0)
            return RunResult(status, f"guest command exited with status {status}",
                             guest_status=status, boot_seconds=boot_seconds)
        if index == 1:
            boot_seconds = time.monotonic() - started
        elif index == 2:
            line = child.match.group(0).strip()
            try:                                   # let the rest of the oops reach the log
                child.expect(pexpect.TIMEOUT, timeout=1.0)
            except pexpect.EOF:
                pass
            return RunResult(exitcodes.PANIC, f"guest kernel panic: {line}",
                             boot_seconds=boot_seconds)
        elif index == 3:
            status = machine.exit_status()
            if service.fatal:
                return RunResult(exitcodes.INTERNAL, service.fatal, boot_seconds=boot_seconds)
            events = [e["event"] for e in service.hv.events]
            if opts.bare_metal and "system_off" in events:
                return RunResult(exitcodes.OK, "the payload powered off")
            if "system_off" in events or "system_reset" in events:
                what = "powered off" if "system_off" in events else "rebooted"
                reason = f"the guest {what} before its command reported a status"
                if not installed_initrd:
                    reason = f"the guest {what} (custom initramfs: no exit marker expected)"
                return RunResult(exitcodes.GUEST_STOPPED, reason, boot_seconds=boot_seconds)
            return RunResult(exitcodes.QEMU, f"QEMU exited unexpectedly (status {status})",
                             boot_seconds=boot_seconds)


def _wait_exit(machine: QemuMachine, timeout: float) -> None:
    try:
        machine.child.expect(pexpect.EOF, timeout=timeout)
    except pexpect.TIMEOUT:
        log.warning("the guest did not power off within %.0f s; stopping QEMU", timeout)


def _interact(machine: QemuMachine, sink) -> RunResult:
    """Hand the console to the user's terminal until the guest powers off."""
    child = machine.child
    child.logfile_read = None
    try:
        child.interact(escape_character="\x1d")      # Ctrl-] leaves
    except OSError:
        pass
    return RunResult(0, "interactive session ended")
