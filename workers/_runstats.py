"""Per-job counters and histograms, recorded as each job settles, for the metrics.

Recorded on the pool's I/O thread (one dict look-up and two bisects per job), read from any thread
as a snapshot. Jobs are grouped by name; past ``MAX_NAMES`` distinct names (a name made per call,
say) the rest share the name ``OTHER``, so the metrics never grow without bound.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from dataclasses import dataclass

# seconds; the last bucket is +Inf
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, math.inf)
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, math.inf)
OUTCOMES = ("ok", "error", "crashed", "timed-out", "cancelled")
MAX_NAMES = 1000
OTHER = "_other"


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # not cumulative: bucket i holds bounds[i-1] < v <= bounds[i]
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative = list(itertools.accumulate(self.counts))
        return HistogramSnapshot(tuple(zip(self.bounds, cumulative, strict=True)), cumulative[-1], self.sum)


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), +Inf last
    count: int
    sum: float


@dataclass(frozen=True)
class JobRunStats:
    """What the jobs of one name did since the pool started."""

    name: str
    outcomes: dict[str, int]  # ok, error, crashed, timed-out, cancelled: final outcomes (after retries)
    duration: HistogramSnapshot  # seconds in the worker, of the runs that returned or raised
    lateness: HistogramSnapshot  # seconds from due to start in the worker


class _Entry:
    __slots__ = ("duration", "lateness", "outcomes")

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.duration = Histogram(DURATION_BUCKETS)
        self.lateness = Histogram(LATENESS_BUCKETS)


class RunStats:
    def __init__(self) -> None:
        self._by_name: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # for adding a name (readers copy the dict under it)

    def _entry(self, name: str) -> _Entry:
        entry = self._by_name.get(name)
        if entry is None:
            with self._lock:
                if len(self._by_name) >= MAX_NAMES and name not in self._by_name:
                    name = OTHER
                entry = self._by_name.get(name)
                if entry is None:
                    entry = self._by_name[name] = _Entry()
        return entry

    def started(self, name: str, lateness: float) -> None:
        self._entry(name).lateness.observe(max(0.0, lateness))

    def settled(self, name: str, outcome: str, duration: float | None) -> None:
        entry = self._entry(name)
        entry.outcomes[outcome] = entry.outcomes.get(outcome, 0) + 1
        if duration is not None:
            entry.duration.observe(duration)

    def snapshot(self) -> list[JobRunStats]:
        with self._lock:
            items = list(self._by_name.items())
        return [
            JobRunStats(name, dict(e.outcomes), e.duration.snapshot(), e.lateness.snapshot())
            for name, e in sorted(items)
        ]
