"""Message queues and the cspace on the fake backend: the same handlers QEMU runs."""
import pytest
from hypothesis import given, settings, strategies as st

from gunyah_el2 import capabilities as caps
from gunyah_el2.backend import EC_HVC64, FakeBackend, RaiseSpi, VcpuExit
from gunyah_el2.errors import GunyahError
from gunyah_el2.hypervisor import Hypervisor

SEND, RECV = 0xC600801B, 0xC600801C
BUF_OUT, BUF_IN = 0x4100_0000, 0x4100_1000     # MMU off in these exits: VA = PA


def trap(hv, *x):
    regs = tuple(list(x) + [0] * (8 - len(x)))
    return hv.handle_exit(VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0x4040_0000, spsr=0x3C5,
                                   x=regs))


@pytest.fixture
def hv():
    return Hypervisor(FakeBackend())


def send(hv, data, flags=0, capid=caps.LOOP_TX.capid):
    hv.backend.write_phys(BUF_OUT, data)
    return trap(hv, SEND, capid, len(data), BUF_OUT, flags)


def recv(hv, size=240, capid=caps.LOOP_RX.capid):
    return trap(hv, RECV, capid, BUF_IN, size)


def test_send_receive_roundtrip_raises_rx_interrupt(hv):
    r = send(hv, b"hello")
    assert r.x[:2] == [0, 1]
    assert r.actions == [RaiseSpi(caps.LOOP_RX.spi)]
    r = recv(hv)
    assert r.x[:3] == [0, 5, 0]
    assert hv.backend.read_phys(BUF_IN, 5) == b"hello"


def test_full_queue_and_tx_interrupt_on_first_room(hv):
    for i in range(caps.LOOP_DEPTH):
        r = send(hv, bytes([i]))
    assert r.x[1] == 0                                    # the filling send: not ready
    r = send(hv, b"x")
    assert r.x[:2] == [GunyahError.MSGQUEUE_FULL, 0]
    r = recv(hv)
    assert r.x[:3] == [0, 1, 1] and r.actions == [RaiseSpi(caps.LOOP_TX.spi)]
    r = recv(hv)
    assert r.actions == []                                # only the full -> not-full edge


def test_error_codes(hv):
    assert send(hv, b"x", capid=(1 << 64) - 1).x[0] == GunyahError.ARG_INVAL
    assert send(hv, b"x", capid=caps.EMPTY_SLOT_CAPID).x[0] == GunyahError.CSPACE_CAP_NULL
    assert send(hv, b"x", capid=caps.LOOP_RX.capid).x[0] == GunyahError.CSPACE_INSUF_RIGHTS
    assert recv(hv, capid=caps.LOOP_TX.capid).x[0] == GunyahError.CSPACE_INSUF_RIGHTS
    assert send(hv, bytes(241)).x[:2] == [GunyahError.ARG_SIZE, 0]
    assert recv(hv).x[:3] == [GunyahError.MSGQUEUE_EMPTY, 0, 0]


def test_bad_receive_buffer_keeps_the_message(hv):
    send(hv, b"keep me")
    assert recv(hv, size=3).x[0] == GunyahError.ARG_SIZE
    assert trap(hv, RECV, caps.LOOP_RX.capid, 0x10, 240).x[0] == GunyahError.ADDR_INVAL
    r = recv(hv)
    assert r.x[:2] == [0, 7] and hv.backend.read_phys(BUF_IN, 7) == b"keep me"


def test_push_raises_rx_even_when_not_empty(hv):
    send(hv, b"a")
    assert send(hv, b"b").actions == []
    assert send(hv, b"c", flags=1).actions == [RaiseSpi(caps.LOOP_RX.spi)]


def test_guest_pointer_goes_through_stage1(hv):
    """A buffer passed as a kernel VA is found through the caller's page tables."""
    be = hv.backend
    l0, l1, l2, l3 = 0x4200_0000, 0x4200_1000, 0x4200_2000, 0x4200_3000
    va = 0xFFFF_0000_1234_5000
    idx = [(va >> s) & 0x1FF for s in (39, 30, 21, 12)]
    be.write_phys(l0 + 8 * idx[0], (l1 | 3).to_bytes(8, "little"))
    be.write_phys(l1 + 8 * idx[1], (l2 | 3).to_bytes(8, "little"))
    be.write_phys(l2 + 8 * idx[2], (l3 | 3).to_bytes(8, "little"))
    be.write_phys(l3 + 8 * idx[3], (0x4300_0000 | 0x703).to_bytes(8, "little"))
    be.write_phys(0x4300_0010, b"via-page-tables")
    tcr = 16 | (16 << 16) | (0b10 << 30)                  # 48-bit VAs, 4 KiB granules
    exit_ = VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0, spsr=0,
                     x=(SEND, caps.LOOP_TX.capid, 15, va + 0x10, 0, 0, 0, 0),
                     ttbr1=l0, tcr=tcr, sctlr=1)
    assert hv.handle_exit(exit_).x[0] == 0
    assert recv(hv).x[1] == 15 and be.read_phys(BUF_IN, 15) == b"via-page-tables"
    bad = VcpuExit(cpu=0, esr=EC_HVC64 << 26, elr=0, spsr=0,
                   x=(SEND, caps.LOOP_TX.capid, 4, 0xFFFF_0000_9999_0000, 0, 0, 0, 0),
                   ttbr1=l0, tcr=tcr, sctlr=1)
    assert hv.handle_exit(bad).x[0] == GunyahError.ADDR_INVAL


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([SEND, RECV, 0xC6008000, 0x8600FF01]),
                          st.sampled_from([caps.LOOP_TX.capid, caps.LOOP_RX.capid,
                                           caps.EMPTY_SLOT_CAPID, 0, (1 << 64) - 1, 5000]),
                          st.integers(0, 300), st.integers(0, 1 << 64 - 1),
                          st.integers(0, 3)), max_size=40))
def test_random_hypercalls_keep_invariants(ops):
    hv = Hypervisor(FakeBackend())
    hv.backend.write_phys(BUF_OUT, bytes(range(256)) + bytes(44))
    model = 0                                              # messages we expect queued
    for fid, capid, size, ptr, flags in ops:
        ptr = BUF_OUT if ptr % 3 else ptr                  # mostly valid, sometimes wild
        if fid == SEND:
            r = trap(hv, SEND, capid, size, ptr, flags)
            model += r.x[0] == 0
        elif fid == RECV:
            r = trap(hv, RECV, capid, ptr, size)
            model -= r.x[0] == 0
        else:
            r = trap(hv, fid)
        assert 0 <= len(hv.primary.loop.messages) <= caps.LOOP_DEPTH
        assert len(hv.primary.loop.messages) == model
        if r.x[0] != 0 and fid in (SEND, RECV):
            assert r.x[0] in {int(e) for e in GunyahError}
            assert r.x[1] == 0                             # failures zero the other results


@settings(max_examples=500, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.lists(st.integers(0, (1 << 64) - 1), min_size=7,
                                                max_size=7), st.sampled_from([0x16, 0x17, 0x18]))
def test_any_function_id_gets_a_defined_answer(fid, args, ec):
    hv = Hypervisor(FakeBackend())
    r = hv.handle_exit(VcpuExit(cpu=0, esr=ec << 26, elr=0x4040_0000, spsr=0,
                                x=(fid, *args)))
    assert all(0 <= v < 1 << 64 for v in r.x)
    assert r.pc in (0x4040_0000, 0x4040_0004)
