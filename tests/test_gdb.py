"""--gdb (the gdb proxy), --pause and the backtraces of a hang or panic.

Fast: the proxy's relay against a fake gdbstub that behaves as QEMU 7.2's does (every byte that
arrives while the guest runs stops it; an interrupt's stop is T02, a breakpoint's T05; no no-ack
mode).  End to end (qemu): gdb-multiarch attaches through the proxy to a paused guest, breaks
in a kernel function and continues to the command's status; a hang's report has a backtrace.
"""
import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import CLI, REPO, gunyah_sim
from qemu_bridge import backtrace, gdbproxy
from qemu_bridge.gdbremote import GdbRemote, _checksum


# --- a fake QEMU gdbstub ------------------------------------------------------------------------

class FakeStub:
    """Speaks the stub side of RSP on a unix socket, with QEMU 7.2's quirks."""

    def __init__(self, path):
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.running = False
        self.phys = False
        self.log = []                  # packets (and b"^C") as received
        self.writes = []               # (phys mode, packet) of M packets
        self.breakpoints = set()
        self.lock = threading.Lock()
        self.conn = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, payload: bytes):
        self.conn.sendall(b"$" + payload + b"#%02x" % _checksum(payload))

    def stop(self, reply: bytes):
        """The guest stops on its own (breakpoint, step) while running."""
        with self.lock:
            if self.running:
                self.running = False
                self._send(reply)

    def _serve(self):
        try:
            self._serve_connection()
        except OSError:                       # the test closed the connection: done
            return

    def _serve_connection(self):
        self.conn, _ = self.srv.accept()
        buf = bytearray()
        while True:
            try:
                data = self.conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf:
                with self.lock:
                    if buf[0] == 3:
                        del buf[:1]
                        self.log.append(b"^C")
                        if self.running:
                            self.running = False
                            self._send(b"T02thread:p01.01;")
                        continue
                    if buf[0] != ord("$"):
                        del buf[:1]
                        continue
                    end = buf.find(b"#")
                    if end < 0 or len(buf) < end + 3:
                        break
                    body = bytes(buf[1:end])
                    del buf[:end + 3]
                    if self.running:          # QEMU: a byte while running stops the guest
                        self.log.append(b"DROPPED " + body)
                        self.running = False
                        self._send(b"T02thread:p01.01;")
                        continue
                    self.log.append(body)
                    self.conn.sendall(b"+")
                    reply = self._answer(body)
                    if reply is not None:
                        self._send(reply)

    def _answer(self, p: bytes):
        if p.startswith(b"qSupported"):
            return b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+"
        if p == b"?":
            return b"T05thread:p01.01;"
        if p[:1] in (b"c", b"C") or p.startswith(b"vCont;c"):
            self.running = True
            return None
        if p[:1] == b"s":
            return b"T05thread:p01.01;"
        if p.startswith(b"Qqemu.PhyMemMode:"):
            self.phys = p.endswith(b"1")
            return b"OK"
        if p[:1] == b"M":
            self.writes.append((self.phys, p))
            return b"OK"
        if p[:1] == b"m":
            n = int(p.split(b",")[1], 16)
            return (b"ee" if self.phys else b"aa") * n
        if p[:1] == b"Z":
            self.breakpoints.add(p[1:])
            return b"OK"
        if p[:1] == b"z":
            self.breakpoints.discard(p[1:])
            return b"OK"
        if p == b"qfThreadInfo":
            return b"mp01.01,p01.02,p01.03"
        if p == b"qsThreadInfo":
            return b"l"
        if p.startswith(b"qThreadExtraInfo"):
            return b"CPU#2 [halted ]".hex().encode()
        if p[:1] == b"H":
            return b"OK"
        if p == b"g":
            return b"00" * 256 + (0xffffffc008001234).to_bytes(8, "little").hex().encode() \
                + b"c5030000"
        return b""

    def close(self):
        for s in (self.conn, self.srv):
            if s is not None:
                s.close()


class UserGdb:
    """The user's gdb side: a TCP client speaking RSP to the proxy."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()
        self.acks = bytearray()

    def send(self, payload: bytes, checksum=None):
        cs = _checksum(payload) if checksum is None else checksum
        self.sock.sendall(b"$" + payload + b"#%02x" % cs)

    def recv(self, timeout=5.0):
        """Next packet's payload (acks collected in self.acks); None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while self.buf[:1] in (b"+", b"-"):
                self.acks += self.buf[:1]
                del self.buf[:1]
            start, end = self.buf.find(b"$"), self.buf.find(b"#")
            if start == 0 and end > 0 and len(self.buf) >= end + 3:
                body = bytes(self.buf[1:end])
                del self.buf[:end + 3]
                return body
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return None
            if not data:
                return None
            self.buf += data

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        reply = self.recv()
        assert reply is not None, f"no reply to {payload!r}"
        return reply

    def close(self):
        self.sock.close()


@pytest.fixture
def relay(tmp_path):
    path = str(tmp_path / "gdb.sock")
    stub = FakeStub(path)
    gdb = GdbRemote(path, timeout=5)
    gdb.supported = gdb.request("qSupported:multiprocess+;qXfer:features:read+")
    gdb.cont()                                     # the guest runs, as after machine.resume()
    time.sleep(0.05)
    proxy = gdbproxy.GdbProxy(gdb, gdbproxy.listen(0), reserved_cpus=[2]).start()
    yield stub, gdb, proxy
    proxy.close()
    gdb.close()
    stub.close()


def attach(proxy):
    user = UserGdb(proxy.port)
    features = user.request(b"qSupported:multiprocess+;swbreak+;xmlRegisters=i386")
    assert proxy.attached.wait(5)
    return user, features


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_proxy_listens_on_loopback_only():
    sock = gdbproxy.listen(0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_attach_stops_guest_answers_qsupported_and_acks(relay):
    stub, gdb, proxy = relay
    user, features = attach(proxy)
    # the stub's own features (multiprocess: thread ids pass through) plus no-ack mode,
    # which the proxy does itself; the user's qSupported never reaches the stub
    assert b"multiprocess+" in features and b"QStartNoAckMode+" in features
    assert sum(1 for p in stub.log if p.startswith(b"qSupported")) == 1
    assert not stub.running and b"^C" in stub.log          # attaching stopped the guest
    assert user.request(b"?") == b"T02thread:p01.01;"
    assert user.acks.count(b"+") == 2
    user.send(b"?", checksum=0)                             # corrupted: nacked, not handled
    assert user.recv(0.3) is None and user.acks.endswith(b"-")
    # thread queries go through; the hypervisor's reserved CPU is marked
    assert user.request(b"qfThreadInfo") == b"mp01.01,p01.02,p01.03"
    extra = bytes.fromhex(user.request(b"qThreadExtraInfo,p1.3").decode()).decode()
    assert extra.startswith("CPU#2") and "reserved for VMs" in extra
    # no-ack mode toward the user only
    assert user.request(b"QStartNoAckMode") == b"OK"
    user.sock.sendall(b"+")                                 # gdb acks the OK, then stops
    acks = len(user.acks)
    assert user.request(b"g").endswith(b"c5030000")
    assert len(user.acks) == acks
    assert b"QStartNoAckMode" not in stub.log
    user.close()


def test_service_stop_is_hidden_from_a_running_user(relay):
    stub, gdb, proxy = relay
    user, _ = attach(proxy)
    user.request(b"Z0,ffffffc008254d00,4")
    user.send(b"vCont;c")
    wait_for(lambda: stub.running)
    gdb.while_stopped(lambda: (gdb.physical_memory_mode(True),
                               gdb.write_memory(0x8000204, b"\x01\0\0\0")))
    assert stub.writes == [(True, b"M8000204,4:01000000")]
    assert stub.running                                     # resumed as the user had it
    assert stub.log[-1] == b"vCont;c"                       # with the user's own packet
    assert user.recv(0.3) is None                           # the user saw no stop
    assert proxy.stats["hidden_stops"] == 1
    # the user's breakpoint hits: the stop reaches the user, the guest stays stopped
    stub.stop(b"T05thread:p01.02;")
    assert user.recv() == b"T05thread:p01.02;"
    assert not stub.running and proxy.held
    # the service writes while the user holds the guest: no interrupt, no resume
    n = len(stub.log)
    gdb.while_stopped(lambda: gdb.write_memory(0x8000208, b"\x02\0\0\0"))
    assert stub.log[n:] == [b"M8000208,4:02000000"] and not stub.running
    # memory reads of the user are virtual again although the service left physical mode on
    assert user.request(b"m1000,2") == b"aaaa"
    assert stub.log[-2:] == [b"Qqemu.PhyMemMode:0", b"m1000,2"]
    assert not any(p.startswith(b"DROPPED") for p in stub.log)
    user.close()


def test_user_breakpoint_during_service_interrupt_reaches_the_user(relay):
    stub, gdb, proxy = relay
    user, _ = attach(proxy)
    user.send(b"c")
    wait_for(lambda: stub.running)
    done = []
    with gdb.lock:                  # the breakpoint's stop is on the wire before our interrupt
        stub.stop(b"T05thread:p01.02;")
        time.sleep(0.05)
        gdb.while_stopped(lambda: done.append(gdb.write_memory(0x8000204, b"\x01\0\0\0")))
    assert done and stub.writes                             # the service still wrote
    assert user.recv() == b"T05thread:p01.02;"              # and the user got its stop
    assert not stub.running and proxy.stats["hidden_stops"] == 0
    assert stub.log.count(b"c") == 2                        # machine start + the user's: no extra
    user.close()


def test_ctrl_c_is_forwarded_and_its_stop_goes_to_the_user(relay):
    stub, gdb, proxy = relay
    user, _ = attach(proxy)
    user.send(b"c")
    wait_for(lambda: stub.running)
    n = stub.log.count(b"^C")
    user.sock.sendall(b"\x03")
    assert user.recv() == b"T02thread:p01.01;"
    assert stub.log.count(b"^C") == n + 1 and not stub.running
    # a step: resume, and its stop comes back
    assert user.request(b"s") == b"T05thread:p01.01;"
    user.close()


def test_detach_removes_breakpoints_and_resumes(relay):
    stub, gdb, proxy = relay
    user, _ = attach(proxy)
    assert user.request(b"Z0,ffffffc008254d00,4") == b"OK"
    assert user.request(b"Z1,ffffffc008001000,4") == b"OK"
    assert user.request(b"D;1") == b"OK"
    wait_for(lambda: stub.running)
    assert stub.breakpoints == set()
    assert not proxy.user_connected and not proxy.held
    # a new gdb can attach afterwards; a dropped connection also resumes
    user, _ = attach(proxy)
    assert not stub.running
    user.request(b"Z0,ffffffc008254d00,4")
    user.close()
    wait_for(lambda: stub.running and not stub.breakpoints)


def test_paused_start_is_held_until_the_user_continues(tmp_path):
    path = str(tmp_path / "gdb.sock")
    stub = FakeStub(path)
    gdb = GdbRemote(path, timeout=5)
    proxy = gdbproxy.GdbProxy(gdb, gdbproxy.listen(0), held=True).start()
    try:
        gdb.while_stopped(lambda: gdb.write_memory(0x8000204, b"\x01\0\0\0"))
        assert b"^C" not in stub.log and not stub.running     # never started, never resumed
        user, _ = attach(proxy)
        assert user.request(b"?") == b"T05thread:p01.01;"     # the stub's own answer
        time.sleep(0.1)
        assert proxy.held_seconds() >= 0.1
        user.send(b"c")
        wait_for(lambda: stub.running)
        assert not proxy.held
        user.close()
    finally:
        proxy.close()
        gdb.close()
        stub.close()


def test_raw_registers_from_g(relay):
    stub, gdb, proxy = relay
    proxy.hold()
    lines = backtrace.raw_registers(gdb, reserved_cpus={2})
    assert len(lines) == 3
    assert lines[0].startswith("cpu0: pc 0xffffffc008001234") and "EL1" in lines[0]
    assert "cpu2 [reserved for VMs]" in lines[2]


def test_find_vmlinux(tmp_path):
    (tmp_path / "Image").write_bytes(b"")
    assert backtrace.find_vmlinux(tmp_path / "Image") is None
    (tmp_path / "vmlinux").write_bytes(b"")
    assert backtrace.find_vmlinux(tmp_path / "Image") == tmp_path / "vmlinux"
    assert backtrace.find_vmlinux(None, tmp_path / "x") == tmp_path / "x"
    assert backtrace.find_vmlinux(None) is None


def test_gdb_needs_shm_and_pause_needs_gdb():
    p = gunyah_sim("run", "--gdb", "1234", "--transport", "gdb")
    assert p.returncode == 2 and "--gdb needs --transport shm" in p.stderr
    p = gunyah_sim("run", "--pause")
    assert p.returncode == 2 and "--pause needs --gdb" in p.stderr
    p = gunyah_sim("test", "--gdb", "70000")
    assert p.returncode == 2


# --- end to end -------------------------------------------------------------------------------

from guest.build import cache_dir                                   # noqa: E402
from test_kernel_build import linux_source                           # noqa: E402,F401


@pytest.fixture(scope="module")
def kbuild(request):
    """A kernel with symbols: `gunyah-sim kernel build` of Debian's linux-source-6.1 (the one
    tests/test_kernel_build.py keeps in the cache; built here when missing)."""
    out = cache_dir() / "kbuild-6.1"
    if not all((out / name).is_file() for name in ("Image", "vmlinux")):
        src = request.getfixturevalue("linux_source")
        p = gunyah_sim("kernel", "build", str(src), "-o", str(out), "-j2", timeout=3600)
        assert p.returncode == 0, p.stderr[-3000:]
    return out


def _gdb_batch(vmlinux, port, *commands, script=None):
    args = ["gdb-multiarch", "-q", "-nx", "-batch", str(vmlinux),
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    if script is not None:
        args += ["-x", str(script)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_gdb_breaks_in_the_kernel_of_a_paused_guest_and_it_finishes(kbuild, no_leftovers):
    run = subprocess.Popen([*CLI, "run", "--kernel", str(kbuild / "Image"), "--smp", "2",
                            "--gdb", "0", "--pause", "--timeout", "120",
                            "--exec", "echo READY-X; sleep 3; echo AFTER-X; exit 7"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hint = run.stderr.readline()
    m = re.search(r"127\.0\.0\.1:(\d+); the guest is paused.*attach with: "
                  r"gdb-multiarch (\S+) -ex \"target remote :(\d+)\"", hint)
    assert m, hint
    port = int(m.group(1))
    assert m.group(2) == str(kbuild / "vmlinux")                  # found next to the Image
    time.sleep(1.0)
    assert run.poll() is None                                      # waiting for gdb
    console = []
    ready = threading.Event()

    def read_console():
        for line in run.stdout:
            console.append(line)
            if line.startswith("READY-X"):
                ready.set()
    reader = threading.Thread(target=read_console, daemon=True)
    reader.start()
    gdb = _gdb_batch(kbuild / "vmlinux", port, "info threads", "break kernel_init", "continue",
                     "bt", "delete", "continue", "info threads", "print $pc", "continue")
    assert ready.wait(60), "".join(console[-20:])
    time.sleep(0.5)
    gdb.send_signal(2)                            # Ctrl-C: gdb sends 0x03 through the proxy
    out, _ = gdb.communicate(timeout=60)
    status = run.wait(timeout=60)
    err = run.stderr.read()
    reader.join(5)
    assert status == 7, err + out
    first = out.split("Breakpoint 1 at")[0]                        # paused: at the shim's entry
    assert "Thread 1.1 (CPU#0" in first and "Thread 1.2 (CPU#1" in first, out   # one per vCPU
    assert re.search(r"hit Breakpoint 1, 0x[0-9a-f]+ in kernel_init \(\)", out), out
    assert re.search(r"#0  0x[0-9a-f]+ in kernel_init \(\)", out), out
    assert "received signal SIGINT, Interrupt" in out, out
    assert "[Inferior 1 (process 1) exited normally]" in out, out
    text = "".join(console)
    assert "AFTER-X" in text and "GSIM-EXIT" in text


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_user_breakpoints_and_the_services_async_writes_do_not_collide(kbuild, no_leftovers,
                                                                     monkeypatch, tmp_path):
    """In process: a thread makes the service raise an (unused) SPI all the time, so it stops
    the guest through the proxy while gdb continues, hits and steps over a breakpoint hundreds
    of times: every hit reaches gdb, none of the service's stops does."""
    from qemu_bridge import session
    proxies = []
    start = gdbproxy.GdbProxy.start
    monkeypatch.setattr(gdbproxy.GdbProxy, "start",
                        lambda self: (proxies.append(self), start(self))[1])
    spam_stop = threading.Event()

    def on_hypervisor(hv):
        def spam():
            while not spam_stop.wait(0.005):
                hv.backend.raise_spi_async(190)          # INTID 222: no device, never enabled
        threading.Thread(target=spam, daemon=True).start()

    port = _free_port()
    script = tmp_path / "gdb.cmds"
    script.write_text("set $hits = 0\nbreak do_sys_openat2\ncommands 1\nsilent\n"
                      "set $hits = $hits + 1\ncontinue\nend\ncontinue\nprint $hits\n")
    gdb_out = []
    gdb_thread = threading.Thread(target=lambda: gdb_out.append(
        _gdb_batch(kbuild / "vmlinux", port, script=script).communicate(timeout=300)[0]))
    gdb_thread.start()
    opts = session.RunOptions(
        kernel=kbuild / "Image", quiet=True, timeout=240, gdb_port=port, pause=True,
        on_hypervisor=on_hypervisor,
        command="i=0; while [ $i -lt 100 ]; do cat /proc/version >/dev/null; i=$((i+1)); "
                "done; exit 5")
    try:
        result = session.run(opts)
    finally:
        spam_stop.set()
    gdb_thread.join(60)
    out = gdb_out[0] if gdb_out else ""
    assert result.code == 5, result.failure_report() + out
    assert "SIGINT" not in out and "SIGTRAP" not in out, out
    hits = int(re.search(r"\$1 = (\d+)", out).group(1))
    assert hits >= 100, out                                         # each cat opens a file
    stats = proxies[0].stats
    print(f"\nbreakpoint hits {hits}, service stops hidden from gdb {stats['hidden_stops']}, "
          f"stops to gdb {stats['user_stops']}")
    assert stats["hidden_stops"] > 0


@pytest.mark.qemu
@pytest.mark.kernel_build
def test_hang_report_has_a_symbolized_backtrace(kbuild, no_leftovers):
    started = time.monotonic()
    p = gunyah_sim("run", "-q", "--kernel", str(kbuild / "Image"), "--smp", "2",
                   "--vmlinux", str(kbuild / "vmlinux"), "--exec", "sleep 600",
                   "--timeout", "15")
    took = time.monotonic() - started
    assert p.returncode == 124, p.stderr
    report = p.stderr.split("--- where each vCPU was ---", 1)[1]
    assert re.search(r"^cpu0: pc 0xffff[0-9a-f]+ .* EL1", report, re.M), report
    assert re.search(r"^cpu1: pc 0x", report, re.M), report
    assert "--- cpu0 (gdb thread 1) ---" in report and "--- cpu1 (gdb thread 2) ---" in report
    assert re.search(r"#0  0x[0-9a-f]+ in (cpu_do_idle|arch_cpu_idle|do_idle) \(\)", report)
    assert "cpu_startup_entry" in report and "secondary_start_kernel" in report, report
    assert took < 15 + 30, took


@pytest.mark.qemu
def test_hang_report_without_vmlinux_has_raw_pcs(no_leftovers):
    p = gunyah_sim("run", "-q", "--exec", "sleep 600", "--timeout", "15")   # Debian's kernel
    assert p.returncode == 124, p.stderr
    report = p.stderr.split("--- where each vCPU was ---", 1)[1]
    assert re.search(r"^cpu0: pc 0xffff[0-9a-f]+ lr 0x[0-9a-f]+ sp 0x[0-9a-f]+ fp 0x[0-9a-f]+ EL1",
                     report, re.M), report
    assert "(no vmlinux" in report
