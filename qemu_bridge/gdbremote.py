"""A direct client of QEMU's gdbstub (the GDB remote serial protocol) over a unix socket.

Hand-written on purpose: the service needs packet-level control (its own breakpoint, `c<addr>`
resumes, physical-memory mode, interrupting a running guest) at a few tens of microseconds a
packet, which gdb plus pygdbmi (about 4-5 ms a stop, measured) cannot give.  pygdbmi is used
where people read the result (symbolized backtraces), never here.

QEMU 7.2 pitfalls handled here: no no-ack mode (every packet is acknowledged), bytes sent while
the guest runs are dropped (except 0x03), and registers are only readable after target.xml
was fetched.
"""
from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time

log = logging.getLogger("gunyah_sim.gdb")


class GdbError(RuntimeError):
    pass


class GdbClosed(GdbError):
    """The stub went away (QEMU exited)."""


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def _unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            out.append(next(it) ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class StopReply:
    """A parsed stop reply: T05thread:p01.02; / S05 / W00 / X09."""

    def __init__(self, packet: bytes):
        self.raw = packet.decode(errors="replace")
        self.kind = self.raw[:1]
        self.signal = int(self.raw[1:3], 16) if len(self.raw) >= 3 else 0
        m = re.search(r"thread:p?([0-9a-f]+)\.([0-9a-f]+)", self.raw)
        self.thread = (int(m.group(1), 16), int(m.group(2), 16)) if m else None

    @property
    def exited(self) -> bool:
        return self.kind in ("W", "X")

    def __repr__(self) -> str:
        return f"StopReply({self.raw!r})"


class GdbRemote:
    def __init__(self, path: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise GdbError(f"cannot connect to the gdbstub at {path}")
                time.sleep(0.02)
        self._buf = bytearray()
        self.timeout = timeout
        self.target_xml: dict[str, str] = {}
        self.registers: dict[str, int] = {}   # register name -> gdb register number
        # Threads: the EL2 service and the user's gdb proxy (gdbproxy.py) share this one stub
        # connection.  A request and its reply, and any interrupt/stop/resume sequence, happen
        # under `lock` (reentrant), so packets of two threads never interleave.
        self.lock = threading.RLock()
        self.phys_mode: bool | None = None    # last Qqemu.PhyMemMode we set (None: never)
        # When set (a GdbProxy), it decides how to stop and resume a guest that its user's gdb
        # may be running or holding: see while_stopped().
        self.stop_owner = None
        self.supported = b""                  # the stub's qSupported reply

    # --- packets ----------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv_some(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except OSError as err:
            raise GdbClosed(f"gdbstub connection lost: {err}") from None
        if not chunk:
            raise GdbClosed("gdbstub closed the connection")
        self._buf += chunk
        return True

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as err:
            raise GdbClosed(f"gdbstub connection lost: {err}") from None

    def send_packet(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        body = _escape(payload)
        self._send(b"$" + body + b"#%02x" % _checksum(body))

    def read_packet(self, timeout: float | None = -1.0) -> bytes | None:
        """Next packet's payload (acks are consumed); None on timeout (timeout=None: block)."""
        if timeout == -1.0:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            start = self._buf.find(b"$")
            if start >= 0:
                end = self._buf.find(b"#", start)
                if end >= 0 and len(self._buf) >= end + 3:
                    body = bytes(self._buf[start + 1:end])
                    del self._buf[:end + 3]
                    try:
                        self._send(b"+")
                    except GdbClosed:     # the stub's last words (W00 as QEMU exits) still count
                        pass
                    return _unescape(body)
            else:
                self._buf.clear() if self._buf and set(self._buf) <= set(b"+-") else None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._recv_some(remaining):
                return None

    def request(self, payload: bytes | str, timeout: float = -1.0) -> bytes:
        with self.lock:
            self.send_packet(payload)
            reply = self.read_packet(timeout)
        if reply is None:
            raise GdbError(f"no reply to {payload!r}")
        if re.fullmatch(rb"[WX][0-9a-fA-F]{2}(;.*)?", reply):
            # The target exited (QEMU powered off) before it answered: no answer will come.
            raise GdbClosed(f"the target exited ({reply.decode(errors='replace')})")
        return reply

    def check_ok(self, payload: bytes | str) -> None:
        reply = self.request(payload)
        if reply != b"OK":
            raise GdbError(f"{payload!r} answered {reply!r}")

    # --- target description -------------------------------------------------------------------
    def read_target_description(self) -> None:
        """Fetch target.xml (and what it includes) and number the registers by name."""
        self.supported = self.request("qSupported:multiprocess+;qXfer:features:read+")
        self._xfer("target.xml")
        number = 0
        for name in self._xml_order("target.xml"):
            xml = self.target_xml.get(name, "")
            for m in re.finditer(r"<reg\s+([^>]*)/?>", xml):
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                if "regnum" in attrs:
                    number = int(attrs["regnum"])
                self.registers[attrs["name"].lower()] = number
                number += 1

    def _xml_order(self, name: str) -> list[str]:
        order = [name]
        for inc in re.findall(r'<xi:include href="([^"]+)"', self.target_xml.get(name, "")):
            order += self._xml_order(inc)
        return order

    def _xfer(self, name: str) -> None:
        data, offset = b"", 0
        while True:
            reply = self.request(f"qXfer:features:read:{name}:{offset:x},fff")
            if not reply or reply[:1] not in b"ml":
                raise GdbError(f"cannot read {name}: {reply!r}")
            data += reply[1:]
            offset += len(reply) - 1
            if reply[:1] == b"l":
                break
        self.target_xml[name] = data.decode()
        for inc in re.findall(r'<xi:include href="([^"]+)"', self.target_xml[name]):
            if inc not in self.target_xml:
                self._xfer(inc)

    def read_register(self, name: str) -> int:
        reply = self.request(f"p{self.registers[name.lower()]:x}")
        if not reply or reply.startswith(b"E"):
            raise GdbError(f"cannot read {name}: {reply!r}")
        return int.from_bytes(bytes.fromhex(reply.decode()), "little")

    # --- memory, threads, execution -----------------------------------------------------------
    def read_memory(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size:
            n = min(size, 0x400)       # QEMU packets hold 4096 characters
            reply = self.request(f"m{addr:x},{n:x}")
            if reply.startswith(b"E") or len(reply) != 2 * n:
                raise GdbError(f"cannot read {n} bytes at {addr:#x}: {reply[:8]!r}")
            out += bytes.fromhex(reply.decode())
            addr, size = addr + n, size - n
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> None:
        for off in range(0, len(data), 0x400):
            chunk = data[off:off + 0x400]
            self.check_ok(f"M{addr + off:x},{len(chunk):x}:{chunk.hex()}")

    def physical_memory_mode(self, on: bool) -> None:
        with self.lock:
            self.check_ok(f"Qqemu.PhyMemMode:{int(on)}")
            self.phys_mode = on

    def select_thread(self, thread: tuple[int, int], op: str = "g") -> None:
        self.check_ok(f"H{op}p{thread[0]:x}.{thread[1]:x}")

    def threads(self) -> list[tuple[int, int]]:
        found = []
        reply = self.request("qfThreadInfo")
        while reply.startswith(b"m"):
            for t in reply[1:].decode().split(","):
                pid, tid = t.lstrip("p").split(".")
                found.append((int(pid, 16), int(tid, 16)))
            reply = self.request("qsThreadInfo")
        return found

    def set_breakpoint(self, addr: int) -> None:
        self.check_ok(f"Z0,{addr:x},4")

    def remove_breakpoint(self, addr: int) -> None:
        self.check_ok(f"z0,{addr:x},4")

    def cont(self, addr: int | None = None) -> None:
        """Resume all CPUs (the current `Hc` thread at `addr` when given); no reply until stop."""
        with self.lock:
            self.send_packet("c" if addr is None else f"c{addr:x}")

    def interrupt(self) -> None:
        with self.lock:
            self._send(b"\x03")

    def while_stopped(self, fn) -> None:
        """Run fn() with every CPU stopped, then let the guest go on as it was.  Without a
        stop owner: interrupt, fn, continue.  With one (the gdb proxy), the owner keeps its
        user's view right (a guest the user holds stays stopped; a user's stop is not lost)."""
        owner = self.stop_owner
        if owner is not None:
            owner.while_stopped(fn)
            return
        with self.lock:
            self.interrupt()
            self.wait_stop(5.0)
            fn()
            self.cont()

    def wait_stop(self, timeout: float | None) -> StopReply | None:
        packet = self.read_packet(timeout)
        return None if packet is None else StopReply(packet)

