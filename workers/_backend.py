"""The worker seam: what the dispatcher needs of a worker, whatever runs it.

A backend starts workers; a worker takes job frames and reports back through the dispatcher's
:class:`WorkerReports`. Local processes (workers._local) are one backend, the fake of the tests
(tests/fakes.py) another, a Dask cluster (workers._dask) the third. The dispatcher (workers._dispatch)
knows nothing else of a worker: not its pipes, not its wire format, not how it was started.

Every method and report runs on the pool's I/O loop, except :meth:`WorkerHandle.send_now`, which
the submitting thread calls for a direct hand-off (under the dispatcher's lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class WorkerReports(Protocol):
    """What one worker tells the dispatcher."""

    def ready(self) -> None:
        """The worker started (its initializer ran): it takes jobs from now on."""

    def result(
        self, ticket: int, started: float, finished: float, rss_kb: int, status: int, payload: memoryview
    ) -> None:
        """A job ended: ``status`` (worker_loop.OK, OK_PLAIN, ERROR) and its pickled value or error.

        ``started`` and ``finished`` are CLOCK_MONOTONIC in the worker; ``rss_kb`` is 0 unless
        the pool measures memory.
        """

    def output(self, ticket: int, stream: str, text: str) -> None:
        """Text a job printed (``stream``: "stdout" or "stderr"); ``ticket`` 0 if no job ran."""

    def line(self, stream: str, line: str) -> None:
        """A line written to the worker's own file descriptors (C code, a program a job ran)."""

    def start_error(self, error: BaseException, stage: str) -> None:
        """Why the worker is about to fail before ready (``stage`` "initializer", or "")."""

    def recalled(self, tickets: Iterable[int]) -> None:
        """The jobs it gave back, unstarted, after :meth:`WorkerHandle.recall`."""

    def exited(self, code: int, started: int | None, reason: str | None = None) -> None:
        """The worker is gone: its exit ``code`` (procman's decoding) and its StartedBoard mark:
        ``ticket << 1`` while it was loading that job, ``| 1`` once the job's code ran, None if
        nothing was ever taken (see procman._child.worker_loop.StartedBoard). ``reason`` says
        how it ended when the exit code cannot (a Dask worker's)."""


class WorkerHandle(Protocol):
    """One worker, as the dispatcher drives it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def label(self) -> str:
        """Where it runs, for messages: ``pid 1234``, ``Dask worker tcp://10.0.0.5:40331``."""

    def send(self, frames: Sequence[bytes]) -> None:
        """Hand it job frames (:meth:`WorkerBackend.frame`), in the order it is to run them."""

    def send_now(self, frame: bytes) -> bool:
        """From any thread: hand it one frame at once, whole, or return False (it is closing)."""

    def recall(self) -> bool:
        """Ask for its jobs not started yet (answered by ``recalled``); False if it cannot."""

    def stop(self) -> None:
        """Exit once the job in hand is done."""

    def kill(self) -> None:
        """End it now (its job fails as crashed); ``exited`` follows."""

    def force_close(self) -> None:
        """Kill it and release everything without waiting (the loop is ending)."""


class BackendReports(Protocol):
    """What a backend tells the dispatcher of itself."""

    def capacity(self, n: int) -> None:
        """It can run ``n`` jobs at once from now on: the dispatcher keeps that many workers."""

    def lost(self, error: BaseException) -> None:
        """It can run nothing any more (its cluster is gone): the pool is broken with ``error``."""


class WorkerBackend(Protocol):
    """Starts a pool's workers."""

    can_recall: bool  # workers hand back jobs held behind a long one (see Core.rebalance)
    prefetch: bool  # a worker may be handed jobs to hold behind its running one (see HandAhead)

    def frame(self, ticket: int, scheduled: float, blob: bytes, name: str) -> bytes:
        """One job for the wire, under a ticket unique to this hand-off; ``scheduled`` is the
        wall-clock time it was scheduled for, or 0.0 (workers.scheduled_time() in the job)."""

    def begin(self, reports: BackendReports) -> None:
        """On the loop, once the dispatcher is made: report the capacity, now and as it changes."""

    def start(self, index: int, reports: WorkerReports) -> WorkerHandle:
        """Start worker number ``index`` (1..max_workers); raises OSError and the like if it can't."""

    async def wind_down(self) -> None:
        """The last step of shutdown on the loop, once every worker exited (bounded)."""

    def close(self) -> None:
        """Release what the workers shared, once the pool is done (the loop has ended)."""
