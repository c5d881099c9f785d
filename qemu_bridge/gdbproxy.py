"""`--gdb PORT`: a gdb remote-protocol proxy, so that a user's gdb can debug the guest while the
EL2 service keeps QEMU's single gdbstub connection (gdbremote.GdbRemote).

    gdb-multiarch vmlinux ──TCP 127.0.0.1:PORT──► GdbProxy ──GdbRemote (unix socket)──► QEMU
    EL2 service (write_async) ───────────────────────┘  (both under GdbRemote.lock)

What the proxy does itself, and why:
- acks toward the user: QEMU 7.2 has no no-ack mode, but gdb may ask for it
  (QStartNoAckMode): the proxy answers OK and stops acking the user; the stub side keeps acking.
- qSupported: answered from what the stub told the service (multiprocess+ stays negotiated,
  so thread ids pass through unchanged: one thread per vCPU, `p1.N` is cpu N-1; the
  hypervisor's reserved CPUs of --vm-cpus are threads too, marked in qThreadExtraInfo).
- attach: the guest is stopped (as QEMU does when a client connects) and `?` answers that
  stop; detach (`D`), kill and a dropped connection remove the user's breakpoints and resume.
- stops: the user's resume (`c`, `s`, `vCont;...`) goes to the stub; the stop reply that
  ends it goes back to the user.  When the service must write (write_async) while the user's
  gdb has the guest running, it calls while_stopped() here: interrupt (QEMU reports T02), the
  writes, then the user's resume packet again, and the user never sees that stop.  If the stop
  is not ours (a breakpoint or step of the user's, T05; the user's own Ctrl-C; the guest's
  exit) it goes to the user and the guest stays stopped.  While the user holds the guest
  stopped, the service writes without any stop or resume.
- memory: the service leaves the stub in physical-memory mode; the proxy switches back to
  the user's mode (virtual unless the user sent Qqemu.PhyMemMode) before each memory packet.

The proxy's packet handling runs in its own thread; the service thread never touches the
user's socket (stops for the user are queued and the proxy thread is woken).  Only one gdb at
a time; the listening socket is bound to 127.0.0.1 only.
"""
from __future__ import annotations

import collections
import logging
import os
import select
import socket
import threading
import time

from .gdbremote import GdbClosed, GdbError, GdbRemote, StopReply, _checksum, _escape, _unescape

log = logging.getLogger("gunyah_sim.gdbproxy")

SIGINT, SIGTRAP = 2, 5
RESUME_PREFIXES = (b"c", b"C", b"s", b"S")
MEMORY_PREFIXES = (b"m", b"M", b"X", b"x")


def listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    """The proxy's listening socket (loopback only); port 0 picks a free port.  Raises OSError."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def attach_hint(port: int, vmlinux=None) -> str:
    return f'gdb-multiarch {vmlinux or "vmlinux"} -ex "target remote :{port}"'


def is_resume(payload: bytes) -> bool:
    if payload[:1] in RESUME_PREFIXES:
        return True
    # vCont;ACTION[:thread]...; a `t` (stop) action alone is not a resume
    return payload.startswith(b"vCont;") and any(
        a[:1] in (b"c", b"C", b"s", b"S") for a in payload[6:].split(b";"))


class GdbProxy:
    def __init__(self, gdb: GdbRemote, listener: socket.socket, *, held: bool = False,
                 reserved_cpus=()):
        self.gdb = gdb
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.reserved_cpus = set(reserved_cpus)
        # the guest's state as far as the user is concerned (all under gdb.lock)
        self.held = False               # stopped on the user's behalf (or never started: -S)
        self._held_since = 0.0
        self._held_total = 0.0
        self._set_held(held)
        self.user_running = False       # the user's gdb resumed and waits for a stop reply
        self.user_interrupt = False     # the user sent 0x03 and its stop has not come yet
        self.resume_packet: bytes | None = None
        self.last_stop: bytes | None = None
        self.user_breakpoints: set[bytes] = set()     # "type,addr,kind" of Z packets
        self.user_phys_mode = False
        # the user's connection (proxy thread only)
        self.conn: socket.socket | None = None
        self.noack = False
        self._inbuf = bytearray()
        self._last_sent = b""
        self._outbox: collections.deque[bytes] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self.stats = collections.Counter()   # hidden_stops, user_stops, attaches, ...
        self.attached = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="gdb-proxy", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "GdbProxy":
        self.gdb.stop_owner = self
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving (the user's gdb sees its connection close).  Idempotent."""
        self._closing = True
        self._wake()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(2.0)
        if self.gdb.stop_owner is self:
            self.gdb.stop_owner = None
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.conn = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def held_seconds(self) -> float:
        """Time the guest spent stopped for the user (not counted against --timeout)."""
        extra = time.monotonic() - self._held_since if self.held else 0.0
        return self._held_total + extra

    @property
    def user_connected(self) -> bool:
        return self.conn is not None

    def _set_held(self, held: bool) -> None:
        if held and not self.held:
            self._held_since = time.monotonic()
        elif not held and self.held:
            self._held_total += time.monotonic() - self._held_since
        self.held = held

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass

    # --- called from other threads ----------------------------------------------------------------
    def while_stopped(self, fn) -> None:
        """GdbRemote.while_stopped for the service: fn() with the guest stopped, the user's
        view unchanged (our own stop hidden, the user's stops kept for the user)."""
        gdb = self.gdb
        with gdb.lock:
            if self.held:
                fn()
                return
            gdb.interrupt()
            stop = gdb.wait_stop(5.0)
            if stop is not None and self.user_running and (
                    stop.exited or stop.signal != SIGINT or self.user_interrupt):
                fn() if not stop.exited else None
                self._user_stop(stop.raw.encode())
                return
            if stop is not None and stop.exited:
                return
            fn()
            self.stats["hidden_stops"] += 1
            if self.user_running and self.resume_packet is not None:
                gdb.send_packet(self.resume_packet)      # as the user had it running
            else:
                gdb.cont()

    def hold(self, timeout: float = 2.0) -> StopReply | None:
        """Stop the guest for a client to come (the backtrace does this before its gdb
        attaches); already held: nothing.  Returns the stop reply, if one came."""
        with self.gdb.lock:
            if self.held:
                return StopReply(self.last_stop) if self.last_stop else None
            if self.user_running:
                raise GdbError("a gdb client has the guest running")
            self.gdb.interrupt()
            stop = self.gdb.wait_stop(timeout)
            self.last_stop = stop.raw.encode() if stop is not None else None
            self._set_held(True)
            return stop

    # --- the proxy thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closing:
                watch = [self._wake_r, self.conn if self.conn is not None else self.listener]
                ready, _, _ = select.select(watch, [], [], 0.02 if self.user_running else 0.5)
                if self._closing:
                    if self.user_running:        # the run ended: pass on QEMU's last stop (W00)
                        self._poll_stub()
                        self._flush_outbox()
                    break
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if self.listener in ready and self.conn is None:
                    self._accept()
                elif self.conn is not None and self.conn in ready:
                    try:
                        data = self.conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._user_left("connection closed")
                    else:
                        self._feed(data)
                if self.user_running:
                    self._poll_stub()
                self._flush_outbox()
        except GdbClosed:
            log.info("gdb proxy: the gdbstub went away")
            self._flush_outbox()
            if self.user_running:                # QEMU died without an exit report
                self._send_user(b"X09")
        except Exception:                       # never take the run down with us
            log.exception("gdb proxy failed")
        finally:
            self._close_conn()

    def _close_conn(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def _accept(self) -> None:
        conn, addr = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.noack, self._inbuf = conn, False, bytearray()
        self.stats["attaches"] += 1
        log.info("gdb proxy: gdb attached from %s:%d", *addr)
        with self.gdb.lock:
            if not self.held:                   # QEMU stops the guest when a client connects
                self.gdb.interrupt()
                stop = self.gdb.wait_stop(5.0)
                if stop is not None and stop.exited:
                    self._send_user(stop.raw.encode())
                self.last_stop = stop.raw.encode() if stop is not None else None
                self._set_held(True)
        self.attached.set()

    def _user_left(self, why: str) -> None:
        """Detach, kill or a dropped connection: remove the user's breakpoints, resume."""
        log.info("gdb proxy: gdb left (%s)", why)
        try:
            with self.gdb.lock:
                if self.user_running:
                    self.gdb.interrupt()
                    stop = self.gdb.wait_stop(5.0)
                    if stop is not None and stop.exited:
                        return
                    self._set_held(True)
                for bp in sorted(self.user_breakpoints):
                    self.gdb.request(b"z" + bp)
                self.user_breakpoints.clear()
                if self.held:
                    self.gdb.cont()
                self._set_held(False)
                self.user_running = self.user_interrupt = False
                self.resume_packet = self.last_stop = None
        finally:
            self._close_conn()
            self.attached.clear()

    def _poll_stub(self) -> None:
        with self.gdb.lock:
            if not self.user_running:
                return
            packet = self.gdb.read_packet(0)
            if packet is not None:
                self._user_stop(packet)

    def _user_stop(self, packet: bytes) -> None:
        """(gdb.lock held) A stop reply for the user: the guest stays stopped until it says."""
        self.stats["user_stops"] += 1
        self.user_running = self.user_interrupt = False
        self.last_stop = packet
        exited = packet[:1] in (b"W", b"X")
        if self.conn is None:                  # nobody to tell: let the guest go on
            if not exited:
                self.gdb.cont()
            return
        self._set_held(not exited)
        self._outbox.append(packet)
        self._wake()

    def _flush_outbox(self) -> None:
        while self._outbox:
            self._send_user(self._outbox.popleft())

    # --- the user's side of the protocol ----------------------------------------------------------
    def _send_user(self, payload: bytes) -> None:
        if self.conn is None:
            return
        body = _escape(payload)
        data = b"$" + body + b"#%02x" % _checksum(body)
        self._last_sent = data
        try:
            self.conn.sendall(data)
        except OSError:
            pass                                 # the recv side notices and cleans up

    def _feed(self, data: bytes) -> None:
        buf = self._inbuf
        buf += data
        while buf and self.conn is not None:
            ch = buf[0]
            if ch == ord("+"):
                del buf[:1]
            elif ch == ord("-"):
                del buf[:1]
                if self._last_sent and not self.noack:
                    self.conn.sendall(self._last_sent)
            elif ch == 0x03:
                del buf[:1]
                self._user_ctrl_c()
            elif ch == ord("$"):
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    return                       # wait for the rest
                body = bytes(buf[1:end])
                try:
                    good = int(buf[end + 1:end + 3], 16) == _checksum(body)
                except ValueError:
                    good = False
                del buf[:end + 3]
                if not self.noack:
                    self.conn.sendall(b"+" if good else b"-")
                if good or self.noack:
                    self._handle(_unescape(body))
            else:
                del buf[:1]                      # noise between packets

    def _user_ctrl_c(self) -> None:
        with self.gdb.lock:
            if self.user_running and not self.user_interrupt:
                self.user_interrupt = True
                self.gdb.interrupt()             # the stop (T02) goes to the user

    def _handle(self, payload: bytes) -> None:
        self.stats["packets"] += 1
        if self.user_running:
            # all-stop gdb sends nothing but 0x03 while the target runs; QEMU would drop it
            log.warning("gdb proxy: packet %r while the guest runs: ignored", payload[:20])
            return
        reply = self._answer(payload)
        if reply is not None:
            self._send_user(reply)
        if payload == b"QStartNoAckMode":
            self.noack = True
        elif payload[:1] == b"D" or payload.startswith(b"vKill"):
            self._user_left("detached" if payload[:1] == b"D" else "kill")
        elif payload == b"k":
            self._user_left("kill")

    def _answer(self, payload: bytes) -> bytes | None:
        """The reply to one user packet (None: no reply now)."""
        gdb = self.gdb
        if payload.startswith(b"qSupported"):
            features = getattr(gdb, "supported", b"") or b"PacketSize=1000;qXfer:features:read+"
            if b"multiprocess+" not in features:
                features += b";multiprocess+"
            return features + b";QStartNoAckMode+"
        if payload == b"QStartNoAckMode":
            return b"OK"
        if payload[:1] == b"D" or payload.startswith(b"vKill"):
            return b"OK"                     # handled after the reply (_user_left)
        if payload == b"k":
            return None
        if payload == b"?" and self.last_stop is not None:
            return self.last_stop
        with gdb.lock:
            if is_resume(payload):
                if payload.startswith(b"c") and len(payload) > 1:
                    payload = b"c"           # `c ADDR` is not re-sendable; gdb never uses it
                self.resume_packet = payload
                self.user_running, self.user_interrupt = True, False
                self._set_held(False)
                self.last_stop = None
                gdb.send_packet(payload)
                self.stats["resumes"] += 1
                return None
            if payload[:1] in MEMORY_PREFIXES and gdb.phys_mode != self.user_phys_mode \
                    and (gdb.phys_mode or self.user_phys_mode):
                gdb.physical_memory_mode(self.user_phys_mode)
            reply = gdb.request(payload)
        if payload[:1] in b"Zz" and reply == b"OK":
            spec = payload[1:]
            (self.user_breakpoints.add if payload[:1] == b"Z" else self.user_breakpoints.discard)(spec)
        elif payload.startswith(b"Qqemu.PhyMemMode:") and reply == b"OK":
            self.user_phys_mode = payload.endswith(b"1")
            gdb.phys_mode = self.user_phys_mode
        elif payload.startswith(b"qThreadExtraInfo,") and reply and reply[:1] != b"E":
            reply = self._annotate_thread(payload, reply)
        return reply

    def _annotate_thread(self, payload: bytes, reply: bytes) -> bytes:
        try:
            tid = int(payload.split(b",", 1)[1].split(b".")[-1], 16)
            text = bytes.fromhex(reply.decode()).decode(errors="replace")
        except ValueError:
            return reply
        if tid - 1 in self.reserved_cpus:
            text += " (gunyah-sim: reserved for VMs' vCPUs)"
        return text.encode().hex().encode()
