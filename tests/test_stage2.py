"""Stage-2 table building, checked by walking what was written to (fake) physical memory."""
from hypothesis import given, settings, strategies as st

from gunyah_el2.backend import FakeBackend
from gunyah_el2.stage2 import PAGE, PageAllocator, Stage2

HYP_MEM = 0x5F00_0000


def make():
    be = FakeBackend()
    pages = PageAllocator(HYP_MEM, 0x40_0000, be.write_phys)
    return be, Stage2(5, pages, be.read_phys, be.write_phys)


def test_pages_and_blocks_translate():
    be, s2 = make()
    s2.map(0x8000_0000, 0x4800_0000, 0x40_0000 + 3 * PAGE)    # two 2 MiB blocks + 3 pages
    assert s2.translate(0x8000_0000) == 0x4800_0000
    assert s2.translate(0x8023_4567) == 0x4823_4567
    assert s2.translate(0x8040_2abc) == 0x4840_2abc
    assert s2.translate(0x8040_3000) is None
    assert s2.translate(0x7FFF_F000) is None
    assert s2.vttbr >> 48 == 5 and s2.vttbr & 0xFFFF_FFFF_FFFF == s2.root


def test_unmap_splits_a_block_and_keeps_the_rest():
    be, s2 = make()
    s2.map(0x4000_0000, 0x4000_0000, 1 << 30)                  # one 1 GiB block
    s2.unmap(0x4123_4000, PAGE)
    assert s2.translate(0x4123_4000) is None
    assert s2.translate(0x4123_3FFF) == 0x4123_3FFF
    assert s2.translate(0x4123_5000) == 0x4123_5000
    assert s2.translate(0x7FFF_FFFF) == 0x7FFF_FFFF
    s2.map(0x4123_4000, 0x4123_4000, PAGE)                     # reclaim maps it back
    assert s2.translate(0x4123_4ABC) == 0x4123_4ABC


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1023), st.integers(1, 64)), max_size=12))
def test_random_map_unmap_matches_a_page_model(ops):
    be, s2 = make()
    base, model = 0x8000_0000, {}
    for is_map, first, count in ops:
        ipa = base + first * PAGE
        if is_map:
            s2.map(ipa, 0x4800_0000 + first * PAGE, count * PAGE)
            model.update({first + i: 0x4800_0000 + (first + i) * PAGE for i in range(count)})
        else:
            s2.unmap(ipa, count * PAGE)
            for i in range(count):
                model.pop(first + i, None)
    for page in range(0, 1100, 7):
        assert s2.translate(base + page * PAGE) == model.get(page)
