"""The dispatcher's rules, on fake workers and a fake clock: no process, no sleep.

Each test drives workers.\\_dispatch.Core through the worker seam (tests/fakes.py): the fake
workers report ready, results, crashes and recalls when the test says so, and time moves only
when the test advances it. The same rules run on real processes in test_pool.py and
test_pool_faults.py; here each one is pinned down alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import FakeBackend, FakeLoop, FakeWorker

from procman._proc.events import EventDispatcher
from procman._proc.output import OutputRouter
from workers import JobTimeout, PoolBroken, PoolEventKind, WorkerCrashed, _dispatch
from workers._dispatch import Core
from workers._futures import JobFuture
from workers._handahead import RECALL_AFTER
from workers._jobs import Job
from workers._lifecycle import INIT_BACKOFF, INIT_BACKOFF_MAX, STOP_GRACE, Settings


@dataclass
class Rig:
    loop: FakeLoop
    backend: FakeBackend
    core: Core
    dispatcher: EventDispatcher
    events: list[Any] = field(default_factory=list)
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def submit(self, name: str = "job", *, timeout: float | None = None, retries: int = 0,
               backoff: float = 0.0, delay: float = 0.0) -> Job:  # fmt: skip
        job = Job(
            next(self.core.ids), name, b"", self.loop.now + delay, timeout, retries, backoff, JobFuture()
        )
        self.core.enqueue(job)
        self.loop.run_ready()
        return job

    def worker(self, n: int) -> FakeWorker:
        """The n-th worker ever started (1-based)."""
        return self.backend.started[n - 1]

    def kinds(self) -> list[PoolEventKind]:
        self.dispatcher.flush()
        return [e.kind for e in self.events]


def make_rig(
    workers: int = 1, *, can_recall: bool = True, max_tasks: int | None = None, fail_starts: int = 0
) -> Rig:
    loop = FakeLoop()
    backend = FakeBackend(loop, can_recall=can_recall, fail_starts=fail_starts)
    events: list[Any] = []
    lines: list[tuple[str, str, str]] = []
    dispatcher = EventDispatcher(events.append, "test-dispatch-events")
    router = OutputRouter(lambda *line: lines.append(line), "workers.job", "job", dispatcher.emit)
    settings = Settings(init_name="init", max_tasks_per_worker=max_tasks, max_memory_mb=None)
    core = Core(settings, loop, dispatcher, router, backend, clock=loop.clock)  # type: ignore[arg-type]
    core.backend.begin(core)
    assert backend.reports is not None
    backend.reports.capacity(workers)
    return Rig(loop, backend, core, dispatcher, events, lines)


@pytest.fixture(autouse=True)
def no_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timed heap's timer fires exactly on time here: no spinning up to the due time, which
    on a clock that stands still between the test's steps would never end."""
    monkeypatch.setattr(_dispatch, "SPIN", 0.0)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.dispatcher.close()


@pytest.fixture
def rig(rigs: list[Rig]) -> Rig:
    rigs.append(made := make_rig(2))
    return made


def test_jobs_wait_for_ready_workers_and_go_out_in_order(rig: Rig) -> None:
    jobs = [rig.submit(f"j{i}") for i in range(3)]
    assert rig.worker(1).inbox == [] and rig.worker(2).inbox == []  # nobody is ready yet
    rig.worker(1).ready()
    rig.worker(2).ready()
    assert rig.worker(1).inbox == [jobs[0].ticket]
    assert rig.worker(2).inbox == [jobs[1].ticket]
    assert rig.core.stats().queued == 1
    rig.worker(1).finish(jobs[0].ticket, 10)
    assert jobs[0].future is not None and jobs[0].future.result(timeout=0) == 10
    assert rig.worker(1).inbox == [jobs[2].ticket]  # the freed worker takes the next in line


def test_a_crash_fails_only_its_job_and_a_replacement_takes_the_queue(rig: Rig) -> None:
    w1, w2 = rig.worker(1), rig.worker(2)
    w1.ready()
    w2.ready()
    a, b, c = rig.submit("a"), rig.submit("b"), rig.submit("c")
    w1.running(a.ticket)
    w1.exit(-9)
    assert a.future is not None
    err = a.future.exception(timeout=0)
    assert isinstance(err, WorkerCrashed) and err.exitcode == -9
    assert "job 'a' died: SIGKILL(-9)" in str(err)
    assert b.future is not None and not b.future.done()  # the other worker's job is untouched
    assert len(rig.backend.started) == 3  # replaced at once
    assert c.ticket == 0  # still queued: the replacement is not ready yet
    rig.worker(3).ready()
    assert rig.worker(3).inbox == [c.ticket]
    assert rig.kinds().count(PoolEventKind.WORKER_CRASHED) == 1
    assert rig.core.stats().crashed == 1


def test_a_job_whose_worker_dies_loading_it_is_requeued_once_then_blamed(rig: Rig) -> None:
    rig.worker(1).ready()
    job = rig.submit("heavy")
    first = job.ticket
    rig.worker(1).loading(first)
    rig.worker(1).exit(-9)
    assert job.future is not None and not job.future.done()  # not its fault yet: first in line again
    rig.worker(2).ready()
    assert rig.worker(2).inbox == [job.ticket] and job.ticket != first  # a new hand-off, a new ticket
    rig.worker(2).loading(job.ticket)
    rig.worker(2).exit(-11)
    err = job.future.exception(timeout=0)
    assert isinstance(err, WorkerCrashed)
    assert "loading job 'heavy'" in str(err) and "twice in a row while unpickling" in str(err)


def test_a_job_handed_over_but_never_taken_goes_back_first_in_line(rig: Rig) -> None:
    w1 = rig.worker(1)
    w1.ready()
    done, next_ = rig.submit("done"), rig.submit("next")
    w1.finish(done.ticket, 1)
    assert w1.inbox == [next_.ticket]  # handed over; the board still shows the job before
    later = rig.submit("later")
    w1.exit(-9)  # killed before it read the frame
    assert next_.future is not None and not next_.future.done()
    rig.worker(2).ready()
    assert rig.worker(2).inbox == [next_.ticket]  # before "later", which came after it
    assert later.ticket == 0
    assert rig.core.stats().crashed == 0


def test_jobs_held_behind_a_crashed_one_go_back_in_their_order(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(1))
    w1 = rig.worker(1)
    w1.ready()
    first = rig.submit("first")
    # A result after 1 ms of running: jobs are short, so a busy worker is topped up.
    w1.finish(first.ticket, 0)
    rig.core.run_avg = 1e-5
    jobs = [rig.submit(f"j{i}") for i in range(5)]
    rig.loop.run_ready()
    assert len(w1.inbox) > 1, "a worker running short jobs holds more than one"
    held = list(w1.inbox)
    running = next(j for j in jobs if j.ticket == held[0])
    w1.running(running.ticket)
    w1.exit(-9)
    assert running.future is not None and isinstance(running.future.exception(timeout=0), WorkerCrashed)
    rig.worker(2).ready()
    rig.loop.run_ready()
    order = [j.name for j in sorted(jobs, key=lambda j: j.ticket) if j is not running]
    assert order == [j.name for j in jobs if j is not running]  # the same order, the crashed one out
    assert all(not (j.future and j.future.done()) for j in jobs if j is not running)


def test_a_timeout_kills_the_worker_and_fails_the_job_with_job_timeout(rig: Rig) -> None:
    rig.worker(1).ready()
    job = rig.submit("slow", timeout=5.0)
    rig.worker(1).running(job.ticket)
    rig.loop.advance(4.99)
    assert not rig.worker(1).killed
    rig.loop.advance(0.02)
    assert rig.worker(1).killed
    rig.worker(1).exit(-9)
    assert job.future is not None
    assert isinstance(job.future.exception(timeout=0), JobTimeout)
    assert PoolEventKind.JOB_TIMED_OUT in rig.kinds()
    assert rig.core.stats().timed_out == 1


def test_a_retry_waits_its_backoff_then_takes_a_free_worker(rig: Rig) -> None:
    rig.worker(1).ready()
    rig.worker(2).ready()
    job = rig.submit("flaky", retries=1, backoff=2.0)
    rig.worker(1).finish(job.ticket, error=ValueError("once"))
    first = job.ticket
    rig.loop.advance(1.9)
    assert job.ticket == first and rig.core.stats().scheduled == 1  # waiting for its backoff
    rig.loop.advance(0.2)
    assert job.ticket != first  # handed out again
    (rig.worker(1) if job.ticket in rig.worker(1).inbox else rig.worker(2)).finish(job.ticket, "ok")
    assert job.future is not None and job.future.result(timeout=0) == "ok"
    assert rig.core.stats().retried == 1


def test_three_failed_starts_in_a_row_break_the_pool_with_the_cause(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(1))
    job = rig.submit("waits")
    rig.worker(1).fail_to_start(ValueError("bad config"))
    assert rig.loop.pending_timers() == [pytest.approx(INIT_BACKOFF)]
    rig.loop.advance(INIT_BACKOFF)
    rig.worker(2).fail_to_start(ValueError("bad config"))
    assert rig.loop.pending_timers() == [pytest.approx(2 * INIT_BACKOFF)]
    rig.loop.advance(2 * INIT_BACKOFF)
    rig.worker(3).fail_to_start(ValueError("bad config"))
    assert rig.core.broken is not None and rig.loop.pending_timers() == []
    assert job.future is not None
    err = job.future.exception(timeout=0)
    assert isinstance(err, PoolBroken) and "the initializer init raised ValueError: bad config" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert rig.kinds().count(PoolEventKind.POOL_BROKEN) == 1


def test_workers_killed_from_outside_while_starting_never_break_the_pool(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(1))
    delays = []
    for n in range(1, 10):
        rig.worker(n).exit(-9)  # SIGKILL before ready: the operator, the OOM killer
        assert rig.core.broken is None
        delays.extend(rig.loop.pending_timers())
        rig.loop.advance(INIT_BACKOFF_MAX)
    assert delays[:3] == [
        pytest.approx(INIT_BACKOFF),
        pytest.approx(2 * INIT_BACKOFF),
        pytest.approx(4 * INIT_BACKOFF),
    ]
    assert max(delays) == pytest.approx(INIT_BACKOFF_MAX)
    rig.worker(10).ready()
    job = rig.submit("fine")
    rig.worker(10).finish(job.ticket, 1)
    assert job.future is not None and job.future.result(timeout=0) == 1


def test_a_start_that_raises_is_retried_without_a_worker_to_show(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(1, fail_starts=1))  # out of file descriptors, once
    assert rig.backend.started == [] and rig.loop.pending_timers() == [pytest.approx(INIT_BACKOFF)]
    rig.loop.advance(INIT_BACKOFF)
    assert len(rig.backend.started) == 1


def test_jobs_held_behind_a_long_one_are_recalled_for_an_idle_worker(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(2))
    w1, w2 = rig.worker(1), rig.worker(2)
    w1.ready()
    warm = rig.submit("warm")
    w1.finish(warm.ticket, 0)
    rig.core.run_avg = 1e-5  # short jobs so far: w1 is topped up
    w2_job = rig.submit("w2-first")  # goes to w1 (w2 not ready): then more to hold behind it
    held = [rig.submit(f"held{i}") for i in range(3)]
    rig.loop.run_ready()
    assert w1.inbox[0] == w2_job.ticket and len(w1.inbox) == 4
    w1.running(w2_job.ticket)
    w2.ready()  # idle, nothing queued: w1's held jobs are asked back once its job runs long
    assert w1.recalls == 0
    rig.loop.advance(RECALL_AFTER)
    assert w1.recalls == 1
    w1.give_back([j.ticket for j in held])
    assert w2.inbox == [j.ticket for j in held]  # the idle worker takes them back, in order
    assert not rig.core.stats().failed


def test_without_recall_nothing_is_asked_back(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(2, can_recall=False))
    w1 = rig.worker(1)
    w1.ready()
    warm = rig.submit("warm")
    w1.finish(warm.ticket, 0)
    rig.core.run_avg = 1e-5
    for i in range(3):
        rig.submit(f"j{i}")
    rig.loop.run_ready()
    rig.worker(2).ready()
    rig.loop.advance(1.0)
    assert w1.recalls == 0


def test_a_worker_is_retired_after_max_tasks_and_replaced_at_once(rigs: list[Rig]) -> None:
    rigs.append(rig := make_rig(1, max_tasks=2))
    w1 = rig.worker(1)
    w1.ready()
    a, b = rig.submit("a"), rig.submit("b")
    w1.finish(a.ticket, 1)
    assert not w1.stopped
    w1.finish(b.ticket, 2)
    assert w1.stopped and len(rig.backend.started) == 2  # the replacement starts now, not at its exit
    assert PoolEventKind.WORKER_RECYCLED in rig.kinds()
    rig.loop.advance(STOP_GRACE)
    assert w1.killed  # it did not exit within its grace
    w1.exit(-9)
    assert rig.core.stats().crashed == 0  # a retiring worker's end is no crash


def test_what_a_job_prints_is_shown_under_its_name(rig: Rig) -> None:
    rig.worker(1).ready()
    job = rig.submit("reporter")
    rig.worker(1).print(job.ticket, "line one\nline two")
    rig.worker(1).print(0, "between jobs", "stderr")
    rig.dispatcher.flush()
    assert rig.lines == [
        ("reporter", "stdout", "line one"),
        ("reporter", "stdout", "line two"),
        ("pool", "stderr", "between jobs"),
    ]


def test_nothing_is_topped_up_behind_a_job_that_has_run_recall_after(rigs: list[Rig]) -> None:
    """The boundary rebalance() recalls at is the one prefetch() stops at: a worker whose job has
    run RECALL_AFTER gets nothing more to hold, or a recall would hand jobs back to it."""
    rigs.append(rig := make_rig(1))
    w1 = rig.worker(1)
    w1.ready()
    warm = rig.submit("warm")
    w1.finish(warm.ticket, 0)
    rig.core.run_avg = 1e-5
    long = rig.submit("long")
    w1.running(long.ticket)
    rig.loop.advance(RECALL_AFTER)
    later = [rig.submit(f"later{i}") for i in range(2)]
    rig.loop.run_ready()
    assert w1.inbox == [long.ticket]
    assert all(j.ticket == 0 for j in later)  # queued for whichever worker frees first


def test_the_workers_follow_the_backends_capacity_up_and_down(rigs: list[Rig]) -> None:
    """A backend whose capacity changes (a Dask cluster's threads): more workers at once when it
    grows, and when it shrinks the idle ones stop now and a busy one once its job is done."""
    rigs.append(rig := make_rig(1))
    assert rig.backend.reports is not None
    rig.worker(1).ready()
    a, b, c = rig.submit("a"), rig.submit("b"), rig.submit("c")
    assert rig.worker(1).inbox == [a.ticket] and rig.core.stats().queued == 2
    rig.backend.reports.capacity(3)
    assert len(rig.backend.started) == 3
    rig.worker(2).ready()
    rig.worker(3).ready()
    assert rig.worker(2).inbox == [b.ticket] and rig.worker(3).inbox == [c.ticket]
    rig.worker(3).finish(c.ticket, 3)  # idle now
    rig.backend.reports.capacity(1)
    assert rig.worker(3).stopped  # idle: stopped at once
    assert not rig.worker(1).stopped and not rig.worker(2).stopped
    rig.worker(2).finish(b.ticket, 2)
    assert rig.worker(2).stopped  # busy: stopped once its job was done, not made idle
    assert not rig.worker(1).stopped
    rig.worker(3).exit(0)
    rig.worker(2).exit(0)
    assert len(rig.backend.started) == 3  # no replacement for a worker the backend has no room for
    assert rig.core.stats().workers == 1
    d = rig.submit("d")
    rig.worker(1).finish(a.ticket, 1)
    assert rig.worker(1).inbox == [d.ticket]


def test_a_backend_that_is_lost_breaks_the_pool(rig: Rig) -> None:
    assert rig.backend.reports is not None
    queued = rig.submit("queued")
    rig.backend.reports.lost(RuntimeError("the cluster is gone"))
    assert queued.future is not None
    err = queued.future.exception(timeout=0)
    assert isinstance(err, PoolBroken) and "the cluster is gone" in str(err)
    assert rig.core.broken is not None
