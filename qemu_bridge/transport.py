"""The mailbox's two doorbells: how Python learns that a CPU trapped, and answers it.

Both speak the one mailbox protocol (mailbox.py); they differ only in how the record and the
reply cross:
- ``ShmTransport`` (default): guest RAM is a shared file mapped here; Python polls each CPU's
  ``seq_req`` and writes the reply straight into RAM.  No QEMU stop, so no translation-cache
  flush.  Polling is adaptive: spin briefly after activity, then sleep with growing pauses.
- ``GdbTransport`` (reference path): a gdbstub breakpoint at the shim's ``doorbell`` label;
  records are read and replies written with ``m``/``M`` packets, then ``c<doorbell+4>``.
"""
from __future__ import annotations

import logging
import struct
import time

from . import mailbox
from .gdbremote import GdbClosed, GdbRemote
from .mailbox import RawReply, decode_exit

# What wait() returns: (seq, kind, VcpuExit), see mailbox.decode_exit.

log = logging.getLogger("gunyah_sim.transport")

_U64 = struct.Struct("<Q")


class TransportClosed(Exception):
    """QEMU went away while we were waiting."""


class ShmTransport:
    name = "shm"
    SPIN_S = 0.002           # keep spinning this long after the last exit
    SLEEP_MIN_S = 20e-6
    SLEEP_MAX_S = 1e-3

    def __init__(self, ram, ncpus: int, gdb: GdbRemote | None = None):
        self.ram = ram
        self.gdb = gdb
        self.ncpus = ncpus
        self.ram_size = len(ram)
        self._last_seq = [0] * ncpus
        self._offsets = [mailbox.mailbox_address(c) - mailbox.RAM_BASE for c in range(ncpus)]
        self._last_activity = time.perf_counter()
        self._sleep = self.SLEEP_MIN_S
        self.interrupted = False

    def _poll_once(self):
        ram = self.ram
        for cpu, off in enumerate(self._offsets):
            seq = _U64.unpack_from(ram, off)[0]
            if seq != self._last_seq[cpu]:
                self._last_seq[cpu] = seq
                return decode_exit(cpu, ram, off)
        return None

    def wait(self, timeout: float):
        """Next exit record, or None after `timeout` seconds (or when interrupted)."""
        deadline = time.perf_counter() + timeout
        while True:
            exit_ = self._poll_once()
            now = time.perf_counter()
            if exit_ is not None:
                self._last_activity = now
                self._sleep = self.SLEEP_MIN_S
                return exit_
            if now >= deadline or self.interrupted:
                return None
            if now - self._last_activity > self.SPIN_S:
                time.sleep(self._sleep)
                self._sleep = min(self._sleep * 2, self.SLEEP_MAX_S)

    def write_async(self, writes: list[tuple[int, int]]) -> None:
        """32-bit physical writes (GIC registers) while no call is in flight: briefly stop
        QEMU through the gdbstub, which is the only way in from outside.  Rare by design."""
        gdb = self.gdb

        def write() -> None:
            gdb.physical_memory_mode(True)
            for addr, value in writes:
                gdb.write_memory(addr, value.to_bytes(4, "little"))
        gdb.while_stopped(write)      # interrupt, write, continue (or as the --gdb proxy says)

    def reply(self, cpu: int, reply: RawReply, seq: int) -> None:
        off = self._offsets[cpu]
        data = reply.encode()
        start = off + mailbox.R_X0
        self.ram[start:start + len(data)] = data
        _U64.pack_into(self.ram, off + mailbox.SEQ_ACK, seq)   # last: releases the CPU

    def write_boot_slot(self, cpu: int, entry: int, context: int) -> None:
        off = mailbox.mailbox_address(cpu) - mailbox.RAM_BASE
        struct.pack_into("<QQ", self.ram, off + mailbox.BOOT_ENTRY, entry, context)

    def read_phys(self, addr: int, size: int) -> bytes:
        off = addr - mailbox.RAM_BASE
        if off < 0 or size < 0 or off + size > self.ram_size:
            raise ValueError(f"physical range {addr:#x}+{size:#x} is not RAM")
        return self.ram[off:off + size]

    def park(self, cpu: int) -> None:
        """Nothing to do: the CPU sleeps in WFI until a reply and a kick wake it."""

    def write_phys(self, addr: int, data: bytes) -> None:
        off = addr - mailbox.RAM_BASE
        if off < 0 or off + len(data) > self.ram_size:
            raise ValueError(f"physical range {addr:#x}+{len(data):#x} is not RAM")
        self.ram[off:off + len(data)] = data


class GdbTransport:
    """Doorbell = breakpoint.  All memory access is physical (Qqemu.PhyMemMode:1)."""
    name = "gdb"

    def __init__(self, gdb: GdbRemote, ncpus: int, doorbell: int, ram_size: int):
        self.gdb = gdb
        self.ncpus = ncpus
        self.doorbell = doorbell
        self.ram_size = ram_size
        self.interrupted = False
        gdb.physical_memory_mode(True)
        gdb.set_breakpoint(doorbell)
        self._stopped_thread: tuple[int, int] | None = None
        self._pending_stop = None        # a doorbell stop that arrived while we interrupted

    def write_async(self, writes: list[tuple[int, int]]) -> None:
        """Interrupt, write, resume.  If a CPU rang the doorbell meanwhile, QEMU reports that
        stop instead (and ignores our interrupt): keep it for wait() and do not resume."""
        self.gdb.interrupt()
        stop = self.gdb.wait_stop(5.0)
        for addr, value in writes:
            self.gdb.write_memory(addr, value.to_bytes(4, "little"))
        if stop is not None and stop.signal == 5:
            self._pending_stop = stop
        else:
            self.gdb.cont()

    def wait(self, timeout: float):
        try:
            stop, self._pending_stop = self._pending_stop, None
            if stop is None:
                stop = self.gdb.wait_stop(timeout)
        except GdbClosed:
            raise TransportClosed() from None
        if stop is None:
            return None
        if stop.exited:
            raise TransportClosed()
        if stop.signal != 5:                 # not a doorbell: an interrupt of ours; resume
            self.gdb.cont()
            return None
        thread = stop.thread or (1, 1)
        self._stopped_thread = thread
        cpu = thread[1] - 1
        page = self.gdb.read_memory(mailbox.mailbox_address(cpu), mailbox.RECORD_BYTES)
        return decode_exit(cpu, page)

    def _thread(self, cpu: int) -> tuple[int, int]:
        return (self._stopped_thread or (1, 1))[0], cpu + 1

    def park(self, cpu: int) -> None:
        """Leave this CPU unanswered (asleep in WFI on its mailbox) and let the others run."""
        self.gdb.select_thread(self._thread(cpu), "c")
        self.gdb.cont(self.doorbell + 4)
        self._stopped_thread = None

    def reply(self, cpu: int, reply: RawReply, seq: int) -> None:
        base = mailbox.mailbox_address(cpu)
        stopped = self._stopped_thread
        if stopped is None:                   # QEMU runs: answering a parked CPU later
            self.gdb.interrupt()
            stop = self.gdb.wait_stop(5.0)
            self._write_reply(base, reply, seq)
            if stop is not None and stop.signal == 5:
                self._pending_stop = stop     # someone rang meanwhile: wait() takes it
            else:
                self.gdb.cont()
            return
        self._write_reply(base, reply, seq)
        if stopped[1] - 1 == cpu:             # the CPU that rang: resume past the doorbell
            self.gdb.select_thread(stopped, "c")
            self.gdb.cont(self.doorbell + 4)
            self._stopped_thread = None
        # else: a parked CPU answered while another one is stopped; that one resumes QEMU

    def _write_reply(self, base: int, reply: RawReply, seq: int) -> None:
        self.gdb.write_memory(base + mailbox.R_X0, reply.encode())
        self.gdb.write_memory(base + mailbox.SEQ_ACK, _U64.pack(seq))

    def write_boot_slot(self, cpu: int, entry: int, context: int) -> None:
        self.gdb.write_memory(mailbox.mailbox_address(cpu) + mailbox.BOOT_ENTRY,
                              struct.pack("<QQ", entry, context))

    def read_phys(self, addr: int, size: int) -> bytes:
        if addr < mailbox.RAM_BASE or addr + size > mailbox.RAM_BASE + self.ram_size:
            raise ValueError(f"physical range {addr:#x}+{size:#x} is not RAM")
        return self.gdb.read_memory(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        if addr < mailbox.RAM_BASE or addr + len(data) > mailbox.RAM_BASE + self.ram_size:
            raise ValueError(f"physical range {addr:#x}+{len(data):#x} is not RAM")
        self.gdb.write_memory(addr, data)
