"""What the dispatcher's parts share: its state and the calls they make of one another.

workers._dispatch.Core is made of parts, each a module of its own (_lifecycle, _schedules,
_handahead, _closing, and _dispatch itself); each part is a subclass of DispatchState, which
declares, for the type checker, the attributes Core sets in its __init__ and the methods one part
calls on another. At run time it is empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    import threading
    from collections import deque
    from collections.abc import Callable, Iterator

    from procman._proc.events import EventDispatcher
    from procman._proc.output import OutputRouter

    from ._backend import WorkerBackend, WorkerReports
    from ._futures import JobFuture, Outcome
    from ._jobs import Job
    from ._lifecycle import Settings, Worker
    from ._runstats import RunStats
    from ._schedules import ScheduleRecord
    from ._timed import TimedQueue


class DispatchState:
    """The dispatcher's state (set by Core.__init__) and its parts' calls on one another."""

    if TYPE_CHECKING:
        cfg: Settings
        loop: asyncio.AbstractEventLoop
        backend: WorkerBackend
        events: EventDispatcher
        output: OutputRouter
        clock: Callable[[], float]
        wall: Callable[[], float]
        lock: threading.RLock
        ids: Iterator[int]
        workers: set[Worker]
        idle: deque[Worker]
        retiring: set[Worker]
        queue: deque[Job]
        timed: TimedQueue[Job | tuple[ScheduleRecord, int]]
        counts: dict[str, int]
        lateness: deque[float]
        run_stats: RunStats
        idle_waiters: list[asyncio.Future[None]]
        init_failures: int
        outside_kills: int
        failures_logged: set[str]
        run_avg: float | None
        hand_ahead: bool
        target: int
        prefetch_soon: bool
        rebalance_timer: asyncio.TimerHandle | None
        broken: BaseException | None
        schedule_records: list[ScheduleRecord]
        stored_futures: dict[str, JobFuture[Any]]
        closing: bool

        def link(self, worker: Worker) -> WorkerReports: ...

        def dispatch(self) -> None: ...

        def check_idle(self) -> None: ...

        def push(self, due: float, item: Job | tuple[ScheduleRecord, int]) -> None: ...

        def arm_timer(self) -> None: ...

        def next_job(self, *, plain: bool) -> Job | None: ...

        def frame(self, job: Job) -> bytes: ...

        def requeue(self, job: Job) -> None: ...

        def drop(self, worker: Worker) -> None: ...

        def drain_inbox(self) -> None: ...

        def job_failed(self, job: Job, error: BaseException | Outcome, *, retry: bool = True) -> None: ...

        def fail_final(self, job: Job, error: BaseException | Outcome) -> None: ...

        def finish_schedule_run(self, job: Job, outcome: Outcome) -> None: ...

        def schedule_cancel(self, sched: ScheduleRecord) -> None: ...

        def stored_finished(self, job: Job, outcome: Outcome) -> None: ...

        def stored_start(self, jobs: list[Job]) -> None: ...

        def stored_abandon(self, job: Job) -> None: ...

        def stored_cancelled(self, job: Job) -> None: ...
