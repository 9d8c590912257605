"""The timed queue: what is due when, earliest first, in submission order among equals.

Pure: no clock and no loop. The dispatcher asks it for the earliest due time to set its one timer,
and for what is due at the time it passes in; tests check the order with plain numbers.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedQueue(Generic[T]):
    """A heap of (due, item); items due at the same time come out in the order they went in."""

    __slots__ = ("_heap", "_seq", "next_due")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        # The earliest due time, math.inf when empty: earliest() as an attribute, for the
        # dispatcher's spin before a due time, which reads it on every turn of the loop.
        self.next_due = math.inf

    def push(self, due: float, item: T) -> bool:
        """Add ``item``; True if it is now the earliest (the timer must move up)."""
        heap = self._heap
        heapq.heappush(heap, (due, next(self._seq), item))
        self.next_due = heap[0][0]
        return heap[0][2] is item

    def earliest(self) -> float | None:
        """The earliest due time, or None when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[T]:
        """Take out, earliest first, every item due at or before ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            self.next_due = heap[0][0] if heap else math.inf
            yield item

    def items(self) -> list[T]:
        """What is in the queue, in no particular order."""
        return [entry[2] for entry in self._heap]

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Remove the items for which ``drop`` is true (O(n): for rare changes); how many went."""
        kept = [entry for entry in self._heap if not drop(entry[2])]
        gone = len(self._heap) - len(kept)
        if gone:
            heapq.heapify(kept)
            self._heap[:] = kept
            self.next_due = kept[0][0] if kept else math.inf
        return gone

    def clear(self) -> None:
        self._heap.clear()
        self.next_due = math.inf

    def __len__(self) -> int:
        return len(self._heap)
