"""Contract tests of workers.Pool on real worker processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jobs
import pytest
from helpers import Events, pid_alive, wait_until

import procman
import workers
from workers import PoolEventKind


@pytest.fixture
def pool(events: Events) -> Iterator[workers.Pool]:
    p = workers.Pool(2, on_event=events)
    try:
        yield p
    finally:
        p.shutdown(wait=True, cancel_futures=True, timeout=10)


# -- the fault table: every row also checks that the next job succeeds ------------------------


def _busy_job(pool: workers.Pool, tmp: Path) -> tuple[Any, int]:
    """A job that has started in a worker (it wrote its pid), and that worker's pid."""
    path = tmp / "pid"
    fut = pool.submit(jobs.write_pid_then_sleep, str(path), 30)
    deadline = time.monotonic() + 15
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return fut, int(path.read_text())


def _kill_busy(pool: workers.Pool, tmp: Path) -> Any:
    fut, pid = _busy_job(pool, tmp)
    os.kill(pid, signal.SIGKILL)
    return fut


def _term_busy(pool: workers.Pool, tmp: Path) -> Any:
    fut, pid = _busy_job(pool, tmp)
    os.kill(pid, signal.SIGTERM)
    return fut


def _at_submit(submit: Callable[[], Any]) -> Future[Any]:
    """For a fault that submit() itself raises: that error, as a failed future (a row like the others)."""
    fut: Future[Any] = Future()
    try:
        submit()
    except BaseException as exc:  # noqa: BLE001 - whatever it raised is what the row checks
        fut.set_exception(exc)
    else:
        pytest.fail("submit() accepted a job it cannot send")
    return fut


def _cancel_running(pool: workers.Pool, tmp: Path) -> Any:
    fut, pid = _busy_job(pool, tmp)
    assert fut.running()
    assert fut.cancel()
    end = time.monotonic() + 10
    while time.monotonic() < end and pid_alive(pid):
        time.sleep(0.01)
    assert not pid_alive(pid), "the cancelled job's worker was not killed"
    return fut


FAULTS: list[tuple[str, Callable[[workers.Pool, Path], Any], type[BaseException], str]] = [
    ("exception", lambda p, t: p.submit(jobs.boom), KeyError, "no such thing"),
    ("sys-exit", lambda p, t: p.submit(jobs.call_sys_exit), SystemExit, "4"),
    ("os-exit", lambda p, t: p.submit(jobs.call_os_exit), workers.WorkerCrashed, "EXIT(3)"),
    ("segfault", lambda p, t: p.submit(jobs.segfault), workers.WorkerCrashed, "SIGSEGV(-11)"),
    ("sigkill-busy", _kill_busy, workers.WorkerCrashed, "SIGKILL(-9)"),
    ("unpickle-error", lambda p, t: p.submit(jobs.take, jobs.RaisesOnLoad()), ValueError, "cannot rebuild"),
    ("unpickle-sys-exit", lambda p, t: p.submit(jobs.take, jobs.ExitsOnLoad()), SystemExit, "5"),
    (
        "unpickle-segfault",
        lambda p, t: p.submit(jobs.take, jobs.SegfaultsOnLoad()),
        workers.WorkerCrashed,
        "SIGSEGV",
    ),
    (
        "result-unpicklable",
        lambda p, t: p.submit(jobs.returns_unpicklable),
        workers.SerializationError,
        "generator",
    ),
    (
        "result-unpickle-error",
        lambda p, t: p.submit(jobs.returns_raises_on_load),
        workers.SerializationError,
        "could not be unpickled",
    ),
    (
        "timeout",
        lambda p, t: p.submit_job(jobs.sleep, (30,), timeout=0.3),
        workers.JobTimeout,
        "timeout of 0.3s",
    ),
    ("cancel-running", _cancel_running, CancelledError, ""),
    # loky's and CPython's crash matrix (test_deadlock.py), the rows the table lacked:
    ("keyboard-interrupt", lambda p, t: p.submit(jobs.raise_keyboard_interrupt), KeyboardInterrupt, "raised"),
    ("sigterm-busy", _term_busy, workers.WorkerCrashed, "SIGTERM(-15)"),
    (
        "arg-unpicklable",  # raised by submit() itself (ProcessPoolExecutor: by result())
        lambda p, t: _at_submit(lambda: p.submit(jobs.take, (i for i in range(3)))),
        workers.SerializationError,
        "positional argument 0",
    ),
    (
        "error-fails-to-unpickle",  # pickles in the worker, cannot be rebuilt anywhere
        lambda p, t: p.submit(jobs.raise_needs_two_args),
        procman.ChildError,
        "NeedsTwoArgs: 1/2",
    ),
    (
        "error-fails-to-unpickle-in-host",  # the worker's own check passes; the host cannot rebuild it
        lambda p, t: p.submit(jobs.raise_unloadable_in, os.getpid()),
        procman.ChildError,
        "carries an object the host cannot rebuild",
    ),
    ("result-pickle-sys-exit", lambda p, t: p.submit(jobs.returns, jobs.ExitsOnDump), SystemExit, "6"),
    (
        "result-pickle-segfault",
        lambda p, t: p.submit(jobs.returns, jobs.SegfaultsOnDump),
        workers.WorkerCrashed,
        "SIGSEGV(-11)",
    ),
    (
        "result-unpickle-sys-exit",  # SystemExit while the host unpickles: that future fails, nothing exits
        lambda p, t: p.submit(jobs.returns, jobs.ExitsOnLoad),
        workers.SerializationError,
        "could not be unpickled",
    ),
]
# Rows whose error is the job's own (or its worker's), with the worker's traceback as __cause__.
REMOTE_CAUSE = {
    "exception",
    "sys-exit",
    "keyboard-interrupt",
    "error-fails-to-unpickle",
    "error-fails-to-unpickle-in-host",
    "result-pickle-sys-exit",
}


@pytest.mark.filterwarnings("ignore:start_method='fork' copies a process:RuntimeWarning")
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
@pytest.mark.parametrize(("case", "make", "exc_type", "text"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_only_its_job(
    case: str,
    make: Callable[[workers.Pool, Path], Any],
    exc_type: type[BaseException],
    text: str,
    method: str,
    events: Events,
    tmp_path: Path,
) -> None:
    pool = workers.Pool(2, start_method=method, on_event=events)
    try:
        assert pool.submit(jobs.add, 1, 1).result(30) == 2
        fut = make(pool, tmp_path)
        with pytest.raises(exc_type) as info:
            fut.result(30)
        assert text in str(info.value)
        if case in REMOTE_CAUSE:
            assert isinstance(info.value.__cause__, procman.RemoteTraceback)
        if exc_type is KeyError:
            assert isinstance(info.value.__cause__, procman.RemoteTraceback)
            assert "def boom" in info.value.__cause__.tb or "boom" in info.value.__cause__.tb
        # the pool keeps serving: the next jobs (on both workers) succeed
        assert [f.result(30) for f in [pool.submit(jobs.add, i, 1) for i in range(4)]] == [1, 2, 3, 4]
        assert not pool.broken
    finally:
        pool.shutdown(wait=True, cancel_futures=True, timeout=10)


def test_an_unpicklable_result_is_explained_as_a_result(pool: workers.Pool) -> None:
    with pytest.raises(workers.SerializationError) as info:
        pool.submit(jobs.returns_unpicklable).result(30)
    message = str(info.value)
    assert message.startswith("the job's result is")
    assert "child process" not in message and "inside the job" not in message


def test_check_job_refuses_what_submit_refuses_without_a_pool(pool: workers.Pool) -> None:
    gen = (i for i in range(3))
    with pytest.raises(workers.SerializationError) as checked:
        workers.check_job(jobs.take, gen)
    with pytest.raises(workers.SerializationError) as submitted:
        pool.submit(jobs.take, gen)
    assert str(checked.value) == str(submitted.value)
    assert "positional argument 0" in str(checked.value)
    with pytest.raises(workers.SerializationError, match="keyword argument 'data'"):
        workers.check_job(jobs.take, data=gen)
    with pytest.raises(TypeError, match="is not callable"):
        workers.check_job(3)  # type: ignore[arg-type]
    assert workers.check_job(jobs.add, 1, 2) is None
    assert workers.check_job(lambda x: x + 1, 1) is None  # by value, as submit sends it


def test_sigkill_of_an_idle_worker_is_replaced(pool: workers.Pool, events: Events) -> None:
    events.wait(lambda evs: sum(e.kind is PoolEventKind.WORKER_STARTED for e in evs) >= 2)
    assert pool.submit(jobs.add, 1, 2).result(30) == 3
    victim = events.of(PoolEventKind.WORKER_STARTED)[0].pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    events.wait(lambda evs: any(e.kind is PoolEventKind.WORKER_EXITED for e in evs))
    pids = {
        f.result(30) for f in [pool.submit(jobs.sleep, 0.05) and pool.submit(jobs.getpid) for _ in range(6)]
    }
    assert victim not in pids
    assert pool.stats().worker_restarts == 1


def test_crash_among_held_jobs_fails_itself_alone_the_rest_run_once(
    pool: workers.Pool, tmp_path: Path
) -> None:
    # Short jobs make workers hold several queued jobs behind the running one (prefetch); a crash
    # fails the crashing job alone, and the jobs it held go back to the queue and run exactly once.
    log = tmp_path / "runs"
    for _ in range(3):
        assert [f.result(30) for f in [pool.submit(jobs.add, i, 1) for i in range(200)]][-1] == 200
    tags = list(range(400))
    futs = {}
    for tag in tags:
        fn = jobs.record_then_exit if tag in (100, 250) else jobs.record
        futs[tag] = pool.submit(fn, str(log), tag)
    for tag, fut in futs.items():
        if tag in (100, 250):
            with pytest.raises(workers.WorkerCrashed, match="EXIT"):
                fut.result(30)
        else:
            assert fut.result(30) == tag
    runs = [int(line) for line in log.read_text().split()]
    assert sorted(runs) == tags  # every job ran, none twice (the crashing ones ran up to their exit)
    stats = pool.stats()
    assert (stats.crashed, stats.done) == (2, 3 * 200 + 398)


def test_a_held_job_cannot_be_cancelled_but_a_queued_one_can(tmp_path: Path) -> None:
    # Like ProcessPoolExecutor's queued calls: a job handed to a worker behind another is RUNNING
    # and cancel() returns False; a job still in the queue is cancelled and never runs.
    # Jobs are held behind one only while recent jobs were short, and only if they reach the loop
    # within RECALL_AFTER (2 ms) of that one's start. Rather than hope the loop is that fast, the
    # pool's I/O thread is held in a done callback while the jobs are submitted: it then takes them
    # in as one batch, hands the worker the blocker and, in the same dispatch, jobs to hold behind
    # it. The blocker waits at a gate until every cancel() is done, so no job behind it can have
    # started by then, however slow the machine. One worker: no other can run the queued jobs.
    log, gate, pre_gate = tmp_path / "runs", tmp_path / "gate", tmp_path / "pre-gate"
    in_loop, release = threading.Event(), threading.Event()
    with workers.Pool(1, on_event=None) as pool:
        try:
            pre = pool.submit(jobs.wait_for_path, str(pre_gate))
            smalls = [pool.submit(jobs.add, i, 1) for i in range(30)]  # short again after `pre`
            hold = pool.submit(jobs.add, 0, 0)  # cannot run before `pre` ends: not done yet
            hold.add_done_callback(lambda _: (in_loop.set(), release.wait(30)))
            pre_gate.touch()
            assert in_loop.wait(30)
            assert pre.done() and all(f.done() for f in smalls)
            # A timed job first: with something in the inbox, no submit below skips the loop (by
            # going straight to the idle worker).
            pool.submit_after(3600, jobs.add, 0, 0).cancel()
            blocker = pool.submit(jobs.wait_for_path, str(gate))
            futs = [pool.submit(jobs.record, str(log), i) for i in range(500)]
            release.set()
            # stats() runs on the loop after the batch was taken in and dispatched
            assert pool.stats().queued < 500, "no job was held behind the blocker"
            outcomes = [f.cancel() for f in futs]
        finally:
            release.set()
            pre_gate.touch()
            gate.touch()
        assert True in outcomes and False in outcomes, outcomes.count(True)
        assert blocker.result(30) is None
        ran = []
        for i, (f, cancelled) in enumerate(zip(futs, outcomes, strict=True)):
            assert f.cancelled() == cancelled
            if not cancelled:
                assert f.result(30) == i
                ran.append(i)
    assert sorted(int(x) for x in log.read_text().split()) == ran  # cancelled jobs never ran


def test_unpicklable_jobs_fail_at_submit_among_good_ones(pool: workers.Pool) -> None:
    good, errors = [], []
    sock = socket.socket()
    try:
        for i in range(100):
            good.append(pool.submit(jobs.add, i, 1))
            with pytest.raises(workers.SerializationError) as info:
                pool.submit(jobs.take, sock)
            errors.append(info.value)
    finally:
        sock.close()
    assert [f.result(30) for f in good] == [i + 1 for i in range(100)]
    assert "positional argument 0 is" in str(errors[0]) and "socket" in str(errors[0])


def test_lambdas_and_closures_run(pool: workers.Pool) -> None:
    k = 10
    assert pool.submit(lambda x: x + k, 5).result(30) == 15
    assert list(pool.map(lambda x: x * x, range(5))) == [0, 1, 4, 9, 16]


def test_recycling_under_a_full_queue() -> None:
    with workers.Pool(2, max_tasks_per_worker=2, on_event=None) as pool:
        futs = [pool.submit(jobs.getpid) for _ in range(40)]
        pids = [f.result(60) for f in futs]
        assert len(set(pids)) >= 20
        assert pool.stats().done == 40


def test_memory_ceiling_recycles_workers() -> None:
    with workers.Pool(1, max_memory_mb=60, on_event=None) as pool:
        small = pool.submit(jobs.allocate, 1).result(30)
        assert pool.submit(jobs.getpid).result(30) == small  # under the ceiling: kept
        big = pool.submit(jobs.allocate, 100).result(30)
        assert pool.submit(jobs.getpid).result(30) != big  # over it: replaced


def test_initializer_runs_in_each_worker() -> None:
    with workers.Pool(2, initializer=jobs.init_worker, initargs=("ready",), on_event=None) as pool:
        tags = {pool.submit(jobs.initialized).result(30) for _ in range(10)}
        assert all(t is not None and t.startswith("ready:") for t in tags)


def test_initializer_that_keeps_crashing_breaks_the_pool(events: Events) -> None:
    pool = workers.Pool(2, initializer=jobs.init_fails, on_event=events)
    try:
        fut = pool.submit(jobs.add, 1, 2)
        with pytest.raises(workers.PoolBroken) as info:
            fut.result(30)
        assert "the initializer init_fails raised RuntimeError: database unreachable" in str(info.value)
        assert "database unreachable" in str(info.value)
        with pytest.raises(workers.PoolBroken):
            pool.submit(jobs.add, 1, 2)
        events.wait(lambda evs: any(e.kind is PoolEventKind.POOL_BROKEN for e in evs))
        assert len(events.of(PoolEventKind.POOL_BROKEN)) == 1
    finally:
        pool.shutdown(timeout=10)


def test_retries_are_opt_in(pool: workers.Pool, tmp_path: Path) -> None:
    once = tmp_path / "once"
    with pytest.raises(ConnectionError):
        pool.submit(jobs.fail_until, str(once), 1).result(30)
    assert once.read_text() == "1"  # ran exactly once
    retried = tmp_path / "retried"
    fut = pool.submit_job(jobs.fail_until, (str(retried), 2), retries=3, retry_backoff=0.01)
    assert fut.result(30) == 3
    assert pool.stats().retried == 2


def test_bounded_pending_raises_or_blocks(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with workers.Pool(1, max_pending=2, on_full="raise", on_event=None) as pool:
        try:  # both pending jobs wait at the gate: the third submit certainly finds no room
            a = pool.submit(jobs.wait_for_path, str(gate))
            b = pool.submit(jobs.wait_for_path, str(gate))
            with pytest.raises(workers.PoolFull, match="max_pending=2"):
                pool.submit(jobs.add, 1, 1)
        finally:
            gate.touch()
        a.result(30), b.result(30)
        assert pool.submit(jobs.add, 1, 1).result(30) == 2
    with workers.Pool(1, max_pending=1, on_event=None) as pool:
        first = pool.submit(jobs.sleep, 0.2)
        second = pool.submit(jobs.add, 2, 2)  # blocks until the first is done
        assert first.done() and second.result(30) == 4


def test_shutdown_cancels_pending_timed_jobs_and_waits_for_queued() -> None:
    pool = workers.Pool(1, on_event=None)
    later = pool.submit_after(3600, jobs.add, 1, 1)
    sched = pool.schedule(jobs.now, every=3600)
    queued = [pool.submit(jobs.sleep, 0.05) for _ in range(3)]
    pool.shutdown(wait=True, timeout=30)
    assert later.cancelled()
    assert sched.state is workers.ScheduleState.CANCELLED
    assert [f.result(0) for f in queued] == [0.05] * 3
    with pytest.raises(workers.PoolClosed):
        pool.submit(jobs.add, 1, 1)


@pytest.mark.timeout(60)
def test_shutdown_is_bounded_when_a_job_hangs(tmp_path: Path) -> None:
    # Guaranteed: shutdown(timeout=0.5) stops waiting for a job that would run for an hour, kills
    # its worker and fails it with PoolClosed. Were it to wait for the job, the test's own timeout
    # (60 s) would fail it: no bound on how fast the shutdown is, only that it ends.
    pool = workers.Pool(1, on_event=None)
    marker = tmp_path / "pid"
    hung = pool.submit(jobs.write_pid_then_sleep, str(marker), 3600)
    wait_until(lambda: marker.exists() and marker.read_text() != "", what="the job to start")
    pid = int(marker.read_text())
    pool.shutdown(wait=True, timeout=0.5)
    with pytest.raises(workers.PoolClosed):
        hung.result(0)
    wait_until(lambda: not pid_alive(pid), what="the hung job's worker to die")


def test_executor_compatibility_and_awaitable_futures() -> None:
    async def main(pool: workers.Pool) -> list[Any]:
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(pool, jobs.add, 2, 3)
        b = await pool.submit(jobs.add, 4, 5)
        c = await asyncio.gather(*(pool.submit(jobs.echo, i) for i in range(3)))
        return [a, b, c]

    with workers.Pool(2, on_event=None) as pool:
        assert asyncio.run(main(pool)) == [5, 9, [0, 1, 2]]
        assert list(pool.map(jobs.add, [1, 2], [10, 20])) == [11, 22]


def test_cancel_of_a_pending_job_notifies_waiters() -> None:
    from concurrent.futures import wait

    with workers.Pool(1, on_event=None) as pool:
        timed = pool.submit_after(3600, jobs.add, 1, 1)
        assert timed.cancel()
        done, _ = wait([timed], timeout=5)
        assert timed in done and timed.cancelled()


# -- timed jobs -----------------------------------------------------------------------------------


def test_submit_at_and_after_never_fire_early_by_the_workers_clock(
    pool: workers.Pool, record_property: Callable[[str, object], None]
) -> None:
    # Guaranteed: a timed job starts no earlier than its time. The pool hands it to a worker once
    # CLOCK_MONOTONIC (shared by every process on Linux) reaches its due time, and the job reads
    # the clock after that. How late it starts depends on the machine's load: that is measured and
    # reported here (and benchmarked in bench/), never bounded.
    pool.submit(jobs.add, 0, 0).result(30)  # workers warm
    target = time.time() + 0.3
    at = pool.submit_at(target, jobs.now)  # epoch seconds, read by the job with time.time()
    before = time.monotonic()
    after = pool.submit_after(0.2, jobs.monotonic)  # due = (monotonic at submit, >= before) + 0.2
    fired_at, fired_after = at.result(30), after.result(30)
    assert fired_at >= target, f"submit_at fired {target - fired_at:.6f}s early"
    assert fired_after >= before + 0.2, f"submit_after fired {before + 0.2 - fired_after:.6f}s early"
    record_property("submit_at_lateness_s", round(fired_at - target, 6))
    record_property("submit_after_lateness_s", round(fired_after - before - 0.2, 6))
    stats = pool.stats()  # the pool's own measure: start in the worker - due time, per job
    assert stats.lateness_p50 is not None and stats.lateness_max is not None
    assert 0 <= stats.lateness_p50 <= stats.lateness_max
    record_property("pool_lateness_max_s", round(stats.lateness_max, 6))


def test_submit_at_never_fires_early_even_if_the_submitting_thread_is_paused(
    pool: workers.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pause is simulated in the conversion of the datetime, which runs between the two reads.
    from workers import _pool

    convert = _pool.to_epoch

    def paused_to_epoch(*args: Any, **kwargs: Any) -> float:
        time.sleep(0.2)  # the submitting thread loses the CPU (or the GIL) here
        return convert(*args, **kwargs)

    monkeypatch.setattr(_pool, "to_epoch", paused_to_epoch)
    pool.submit(jobs.add, 0, 0).result(30)
    target = datetime.now() + timedelta(seconds=0.5)  # naive: local time
    fired = pool.submit_at(target, jobs.now).result(30)
    assert fired >= target.timestamp(), f"fired {target.timestamp() - fired:.3f}s early"


def test_every_is_anchored_without_drift(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    # Guaranteed, whatever the load:
    # - the schedule's times are start + k * every: next_run_time is always on that grid, however
    #   late a timer fired or a run started (no drift);
    # - no run starts before its time, and each run is for a later time than the one before, so
    #   the k-th run starts at or after start + k * every;
    # - a run held up past later times (here: behind a job holding the only worker) runs late
    #   once, and the times after it stay on the grid.
    # How late each run started is measured and reported, never bounded: it depends on the machine.
    every = 0.1
    log, gate = tmp_path / "times", tmp_path / "gate"
    with workers.Pool(1, on_event=None) as pool:
        try:
            pool.submit(jobs.add, 0, 0).result(30)  # the worker is up
            start = time.time() + 0.2
            sched = pool.schedule(jobs.append_time, every=every, start=start, args=(str(log),))
            times = [sched.next_run_time]
            for n in (1, 2, 3):
                assert sched.wait(runs=n, timeout=30)
                times.append(sched.next_run_time)
            blocker = pool.submit(jobs.wait_for_path, str(gate))
            wait_until(blocker.running, what="the blocker to hold the worker")
            held_at = time.time()

            def two_times_passed_while_held() -> bool:
                upcoming = sched.next_run_time
                return upcoming is not None and upcoming.timestamp() > held_at + 3 * every

            wait_until(two_times_passed_while_held, what="two scheduled times to pass while held")
            times.append(sched.next_run_time)
        finally:
            released_at = time.time()
            gate.touch()
        done = sched.runs
        for n in (done + 1, done + 2):  # the held run (late), then one on its time again
            assert sched.wait(runs=n, timeout=30)
            times.append(sched.next_run_time)
        sched.cancel()
    assert sched.next_run_time is None and sched.state is workers.ScheduleState.CANCELLED
    for when in times:
        assert when is not None
        k = round((when.timestamp() - start) / every)
        # next_run_time has microseconds; start + k * every is summed in floats: a few us of slack
        assert k >= 0 and abs(when.timestamp() - (start + k * every)) < 5e-6, (k, when.timestamp() - start)
    assert times == sorted(times)
    runs = [float(x) for x in log.read_text().split()]
    assert len(runs) == sched.runs >= 5
    late = []
    for k, ran in enumerate(runs):  # (1 us of slack for the float sums, as above)
        assert ran >= start + k * every - 1e-6, f"run {k} started {start + k * every - ran:.6f}s early"
        late.append(ran - (start + math.floor((ran - start) / every) * every))
    held = [ran for ran in runs if ran >= released_at]
    assert held and held[0] - held_at > every  # the held run did run late: the case was exercised
    record_property("every_lateness_max_s", round(max(late), 6))


def test_overlap_skip_and_queue(events: Events, tmp_path: Path) -> None:
    # Guaranteed: a time that comes due while max_instances runs are going is skipped
    # (overlap="skip") or queued behind them (overlap="queue"), with an event either way. The first
    # runs wait at a gate, so the times that come due meanwhile certainly overlap them.
    gate = tmp_path / "gate"

    def seen(kind: PoolEventKind, name: str) -> Callable[[list[workers.PoolEvent]], bool]:
        return lambda evs: any(e.kind is kind and e.name == name for e in evs)

    with workers.Pool(2, on_event=events) as pool:
        try:
            skip = pool.schedule(jobs.wait_for_path, every=0.05, args=(str(gate),), name="slow-skip")
            events.wait(seen(PoolEventKind.RUN_SKIPPED, "slow-skip"))
            assert skip.skipped > 0 and skip.runs == 0  # the first run still waits at the gate
            queued = pool.schedule(
                jobs.wait_for_path,
                every=0.05,
                args=(str(gate),),
                name="slow-queue",
                overlap="queue",
                misfire_grace=None,
            )
            events.wait(seen(PoolEventKind.RUN_QUEUED, "slow-queue"))
        finally:
            gate.touch()
        assert skip.wait(runs=2, timeout=30)
        skip.cancel()
        assert queued.wait(runs=3, timeout=30)
        queued.cancel()
        assert queued.skipped == 0


def test_failed_and_crashed_runs_never_stop_a_schedule(events: Events) -> None:
    with workers.Pool(1, on_event=events) as pool:
        failing = pool.schedule(jobs.boom, every=0.05, name="failing")
        crashing = pool.schedule(jobs.call_os_exit, every=0.07, name="crashing")
        assert failing.wait(runs=3, timeout=30) and crashing.wait(runs=2, timeout=30)
        failing.cancel()
        crashing.cancel()
        assert pool.submit(jobs.add, 1, 1).result(30) == 2
    # Read once the pool is shut down: a run under way at cancel() may end between two reads.
    assert failing.failures == failing.runs >= 3 and isinstance(failing.last_error, KeyError)
    assert crashing.failures == crashing.runs >= 2
    assert isinstance(crashing.last_error, workers.WorkerCrashed)


def test_pause_resume_cancel(pool: workers.Pool) -> None:
    # Guaranteed: no run starts while paused (one already handed to a worker may finish). Instead
    # of sleeping and hoping time passed, a witness schedule with the same interval on the same
    # pool shows that three of its times came and went (and ran) while this one stayed paused.
    sched = pool.schedule(jobs.now, every=0.05)
    assert sched.wait(runs=1, timeout=30)
    sched.pause()
    assert sched.state is workers.ScheduleState.PAUSED and sched.next_run_time is None
    runs = sched.runs
    witness = pool.schedule(jobs.now, every=0.05, name="witness")
    assert witness.wait(runs=3, timeout=30)
    witness.cancel()
    assert sched.runs <= runs + 1  # one run may have been in flight when pausing
    assert sched.next_run_time is None
    paused_runs = sched.runs
    sched.resume()
    assert sched.wait(runs=paused_runs + 2, timeout=30)
    assert isinstance(sched.last_result, float)
    sched.cancel()


def test_schedule_end_finishes_it(pool: workers.Pool, tmp_path: Path) -> None:
    # Guaranteed: no run for a time after `end`, and the schedule ends (FINISHED) once its last
    # time came. The window holds six times (start + 0..5 * every); how many of them ran depends on
    # the load (a late timer runs the times that came due together once), so the count is bounded
    # by the window, not by a guess of the machine's speed.
    every = 0.05
    log = tmp_path / "times"
    start = time.time() + 0.1
    end = start + 5.5 * every
    sched = pool.schedule(jobs.append_time, every=every, start=start, end=end, args=(str(log),))
    wait_until(lambda: sched.state is workers.ScheduleState.FINISHED, timeout=30, what="the schedule to end")
    assert sched.next_run_time is None
    pool.shutdown()  # the last run, if still going, ends
    runs = [float(x) for x in log.read_text().split()]
    assert 1 <= len(runs) == sched.runs <= 6
    for k, ran in enumerate(runs):  # the k-th run is for the k-th time or a later one
        assert ran >= start + k * every - 1e-6, f"run {k} started {start + k * every - ran:.6f}s early"


BAD_SCHEDULES: list[tuple[dict[str, Any], str]] = [
    ({}, "exactly one of every="),
    ({"every": 1, "cron": "* * * * *"}, "exactly one of every="),
    ({"every": 0}, "every=0 must be > 0"),
    ({"every": -5}, "every=-5"),
    ({"cron": "every day"}, "has 2 fields; use five"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "not a known time zone"),
    ({"every": 1, "overlap": "sometimes"}, "overlap='sometimes'"),
    ({"every": 1, "start": 100.0, "end": 50.0}, "is before start"),
    ({"every": 1, "tz": "UTC"}, "tz= applies to cron"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SCHEDULES)
def test_bad_schedules_are_rejected_at_once(pool: workers.Pool, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((workers.ScheduleError, ValueError)) as info:
        pool.schedule(jobs.now, **kwargs)
    assert message in str(info.value)
    assert pool.submit(jobs.add, 1, 1).result(30) == 2


def test_bad_pool_options_are_rejected() -> None:
    for kwargs, message in [
        ({"max_workers": 0}, "max_workers=0"),
        ({"start_method": "threads"}, "start_method='threads'"),
        ({"max_pending": -1}, "max_pending=-1"),
        ({"on_full": "drop"}, "on_full='drop'"),
        ({"job_timeout": -1}, "job_timeout=-1"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            workers.Pool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_workers_die_with_the_pool_process(method: str, tmp_path: Path) -> None:
    import subprocess
    import textwrap

    script = tmp_path / "host.py"
    tests_dir = str(Path(__file__).parent)
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            sys.path.insert(0, {tests_dir!r})
            import workers, jobs
            if __name__ == "__main__":
                pool = workers.Pool(2, start_method=sys.argv[1], on_event=None)
                marker = {str(tmp_path / "busy")!r}
                busy = pool.submit(jobs.write_pid_then_sleep, marker, 3600)
                pids = {{pool.submit(jobs.getpid).result(30) for _ in range(20)}}
                while not os.path.exists(marker) or not open(marker).read():
                    time.sleep(0.01)
                pids.add(int(open(marker).read()))
                print("PIDS", *pids, flush=True)
                time.sleep(3600)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), method],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the killed host cannot clean its temp dir
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2  # the busy worker and the idle one
        proc.kill()
        proc.wait(10)
        # They die at once (parent-death signal); an orphan would live on for its hour-long job.
        wait_until(lambda: not any(pid_alive(p) for p in pids), what="the workers to die with the host")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_runs_waiting_beyond_the_misfire_grace_are_missed(events: Events, tmp_path: Path) -> None:
    # Guaranteed: a run that waited for a worker longer than misfire_grace is dropped and counted.
    # The only worker is held at a gate until a time 0.2 s after the schedule's first one came,
    # so the first run has certainly waited more than the 0.1 s grace when a worker frees up.
    gate = tmp_path / "gate"
    with workers.Pool(1, on_event=events) as pool:
        try:
            blocker = pool.submit(jobs.wait_for_path, str(gate))
            wait_until(blocker.running, what="the blocker to hold the worker")
            sched = pool.schedule(
                jobs.now, every=0.05, max_instances=100, misfire_grace=0.1, name="impatient"
            )
            first = sched.next_run_time
            assert first is not None
            first_at = first.timestamp()

            def a_later_time_came() -> bool:
                upcoming = sched.next_run_time
                return upcoming is not None and upcoming.timestamp() > first_at + 0.25

            wait_until(a_later_time_came, what="0.2 s of scheduled times to pass")
        finally:
            gate.touch()
        assert blocker.result(30) is None
        assert sched.wait(runs=1, timeout=30)
        sched.cancel()
        assert sched.missed > 0  # runs queued behind the blocker longer than 0.1 s were dropped
        events.wait(
            lambda evs: any(e.kind is PoolEventKind.RUN_MISSED and e.name == "impatient" for e in evs)
        )
        assert pool.submit(jobs.add, 1, 1).result(30) == 2


def test_submits_racing_shutdown_all_resolve() -> None:
    from concurrent.futures import wait

    pool = workers.Pool(2, on_event=None)
    futures: list[Any] = []
    lock = threading.Lock()
    started = threading.Barrier(5)

    def submitter() -> None:
        started.wait(10)
        while True:
            try:
                fut = pool.submit(jobs.add, 1, 1)
            except workers.PoolClosed:
                return
            with lock:
                futures.append(fut)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(10)
    wait_until(lambda: len(futures) >= 200, what="submissions to pile up")  # the race needs them
    pool.shutdown(wait=True, timeout=30)
    for t in threads:
        t.join(10)
    assert futures
    _, not_done = wait(futures, timeout=10)
    assert not not_done  # every future resolved: a result, PoolClosed, or cancelled
    outcomes = {type(f.exception()).__name__ if f.exception() else "ok" for f in futures}
    assert outcomes <= {"ok", "PoolClosed"}


def test_kill_ends_running_held_and_queued_jobs_at_once(tmp_path: Path) -> None:
    pool = workers.Pool(2)
    try:
        for _ in range(3):
            [f.result(30) for f in [pool.submit(jobs.add, i, 1) for i in range(200)]]
        # A job with a timeout is never held behind another one: both blockers run, one per worker.
        markers = [tmp_path / f"pid{i}" for i in range(2)]
        blockers = [pool.submit_job(jobs.write_pid_then_sleep, (str(m), 60), timeout=600) for m in markers]
        rest = [pool.submit(jobs.add, i, 1) for i in range(300)]
        wait_until(lambda: all(m.exists() and m.read_text() for m in markers), what="both blockers to start")
        pids = [int(m.read_text()) for m in markers]
        pool.kill()
        for f in blockers:
            with pytest.raises(workers.WorkerCrashed):
                f.result(30)
        for f in rest:
            with pytest.raises(workers.PoolClosed):
                f.result(30)
        pool.shutdown(wait=True, timeout=30)
        # killed, not left to sleep out their 60 s
        wait_until(lambda: not any(pid_alive(p) for p in pids), what="the blockers' workers to die")
    finally:
        pool.shutdown(wait=False)


def test_map_returns_results_in_input_order(pool: workers.Pool) -> None:
    assert list(pool.map(jobs.add, range(50), range(50))) == [2 * i for i in range(50)]
    assert list(pool.map(jobs.add, [1, 2, 3], [10])) == [11]  # stops with the shortest input
    with socket.socket() as sock, pytest.raises(workers.SerializationError):
        pool.map(jobs.echo, [sock])  # submit errors raise at the call, as in the stdlib


def test_map_buffersize_bounds_what_is_submitted_ahead(pool: workers.Pool) -> None:
    consumed = 0

    def endless() -> Iterator[int]:
        nonlocal consumed
        while True:
            consumed += 1
            yield consumed

    results = pool.map(jobs.echo, endless(), buffersize=4)
    first = [next(results) for _ in range(10)]
    assert first == list(range(1, 11))
    assert consumed <= 10 + 4  # never more than buffersize ahead of what was read
    results.close()  # leaving early cancels what was submitted ahead
    with pytest.raises(ValueError, match="buffersize=0"):
        pool.map(jobs.echo, [1], buffersize=0)


def test_map_timeout_covers_the_whole_iteration(pool: workers.Pool, tmp_path: Path) -> None:
    # As concurrent.futures documents: the deadline runs from the map() call; a result that is ready
    # is returned even when asked for after the deadline, one that is not raises TimeoutError, and
    # its job is cancelled. The test waits for the first two jobs to finish and for the deadline to
    # pass; the third job waits at a gate. No outcome depends on the machine's speed.
    gate, log = tmp_path / "gate", tmp_path / "ran"
    done = pool.stats().done
    results = pool.map(
        jobs.wait_then_record,
        [str(tmp_path), str(tmp_path), str(gate)],  # the first two gates (a directory) are open
        [str(log)] * 3,
        [0, 1, 2],
        timeout=0.2,
    )
    deadline = time.monotonic() + 0.2  # not before the map's own deadline
    wait_until(lambda: pool.stats().done >= done + 2, what="the first two jobs")
    while time.monotonic() <= deadline:  # past the deadline, on purpose
        time.sleep(0.01)
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(TimeoutError):
        next(results)
    wait_until(lambda: pool.stats().cancelled == 1, what="the timed-out job's worker to be killed")
    gate.touch()
    assert pool.submit(jobs.add, 1, 1).result(30) == 2
    pool.shutdown()
    # The third job was cancelled, not left running (the first two ran at once: in either order).
    assert sorted(log.read_text().split()) == ["0", "1"]


def test_shutdown_without_waiting_still_runs_queued_and_running_jobs() -> None:
    pool = workers.Pool(1)
    running = pool.submit(jobs.sleep, 0.3)
    queued = [pool.submit(jobs.add, i, 1) for i in range(5)]
    pool.shutdown(wait=False)  # returns at once; the jobs still finish, as in concurrent.futures
    with pytest.raises(workers.PoolClosed):
        pool.submit(jobs.add, 1, 1)
    assert running.result(30) == 0.3
    assert [f.result(30) for f in queued] == [1, 2, 3, 4, 5]
    pool.shutdown(wait=True)  # a second call waits for the first one to end


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.schedule(jobs.now, every=1e-9), "less than 0.001s"),
        (lambda p: p.schedule(jobs.now, every=float("inf")), "every=inf"),
        (lambda p: p.schedule(jobs.now, every=1e308), "more than 100 years"),
        (lambda p: p.submit_job(jobs.add, (1, 2), timeout=1e10), "from 0 to 100 years"),
        (lambda p: p.submit_job(jobs.add, (1, 2), retries=1, retry_backoff=1e308), "retry_backoff=1e+308"),
        (lambda p: p.shutdown(timeout=float("inf")), "timeout=inf"),
    ],
)
def test_durations_beyond_any_timer_are_refused_at_the_call(
    pool: workers.Pool, call: Callable[[workers.Pool], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call(pool)
    assert pool.submit(jobs.add, 2, 3).result(30) == 5  # nothing else is affected


def test_a_restart_policy_refuses_nan_and_huge_values() -> None:
    for kwargs in ({"backoff_initial": float("nan")}, {"within": 1e12}, {"backoff_factor": float("nan")}):
        with pytest.raises(procman.DaemonError, match="RestartPolicy"):
            procman.RestartPolicy(**kwargs)  # type: ignore[arg-type]
    with procman.Manager(on_event=None) as m, pytest.raises(procman.DaemonError, match="100 years"):
        m.start(timeout=1e10)


def test_a_cancelled_future_keeps_the_executor_contract(pool: workers.Pool, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    try:  # both workers wait at the gate until the queued job is cancelled
        blocker = pool.submit_job(jobs.wait_for_path, (str(gate),), timeout=60)
        other = pool.submit_job(jobs.wait_for_path, (str(gate),), timeout=60)
        queued = pool.submit(jobs.add, 1, 1)  # behind two running jobs: still pending
        assert queued.cancel() and queued.cancelled() and queued.done()
        done, _ = concurrent.futures.wait([queued], timeout=5)  # seen as done at once
        assert done == {queued}
        assert queued.set_running_or_notify_cancel() is False  # as documented, not RuntimeError
    finally:
        gate.touch()
    assert blocker.result(30) is None and other.result(30) is None
