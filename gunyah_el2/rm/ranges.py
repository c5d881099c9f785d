"""Disjoint address ranges mapped to values: which parcel holds a page, who owns a page."""
from __future__ import annotations

import bisect
from typing import Any, Iterator


class RangeMap:
    """Half-open ranges [start, end) that never overlap, each with a value.

    `assign` overwrites whatever was there (splitting neighbours); `assign(..., None)` erases.
    Adjacent ranges with the same value are not merged.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[tuple[int, int, Any]] = []     # sorted by start

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def overlapping(self, start: int, end: int) -> list[tuple[int, int, Any]]:
        """The stored ranges that intersect [start, end), clipped to it, in address order."""
        if start >= end:
            return []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for s, e, v in self._items[i:]:
            if s >= end:
                break
            if e > start:
                out.append((max(s, start), min(e, end), v))
        return out

    def covered(self, start: int, end: int, value: Any) -> bool:
        """Whether every address of [start, end) is mapped to `value`."""
        pos = start
        for s, e, v in self.overlapping(start, end):
            if s != pos or v != value:
                return False
            pos = e
        return pos >= end

    def assign(self, start: int, end: int, value: Any) -> None:
        if start >= end:
            return
        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0 or self._items[i][1] <= start:
            i += 1
        j = bisect.bisect_left(self._starts, end)
        pieces = []
        if i < j:
            s, e, v = self._items[i]
            if s < start:
                pieces.append((s, start, v))
        if value is not None:
            pieces.append((start, end, value))
        if i < j:
            s, e, v = self._items[j - 1]
            if e > end:
                pieces.append((end, e, v))
        self._items[i:j] = pieces
        self._starts[i:j] = [s for s, _, _ in pieces]
