"""The pool under faults and misuse: what it keeps alive, what it blames, what it survives.

Each test here failed before the fix it guards (see the issue "Every promise holds under races and
faults"). They synchronize on process states and futures, never on sleeps.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
import weakref
from pathlib import Path

import jobs
import pytest
from helpers import Events, proc_state, titled, wait_until

import workers
from workers import PoolEventKind, WorkerCrashed


def _one_worker(name: str) -> int:
    """The pid of the only worker of the pool named ``name``, once it is up."""
    found: set[int] = set()

    def up() -> bool:
        found.clear()
        found.update(titled(f"procman: worker 1 ({name})"))
        return len(found) == 1

    wait_until(up, what=f"the worker of {name}")
    return found.pop()


# -- what the pool keeps alive ----------------------------------------------------------------------


def test_a_dropped_pool_finishes_its_jobs_then_releases_workers_and_threads() -> None:
    pool = workers.Pool(2, name="dropped", on_event=None)
    fut = pool.submit(jobs.sleep, 0.3)
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None, "something still holds the pool"
    assert fut.result(30) == 0.3  # a held future of a dropped pool still completes
    wait_until(lambda: not titled("procman: worker 1 (dropped)"), what="the workers to exit")
    wait_until(
        lambda: not any(t.name in ("workers-io", "workers-events") for t in threading.enumerate()),
        what="the pool's threads to end",
    )


def test_a_schedule_in_hand_keeps_its_pool_running(tmp_path: Path) -> None:
    log = tmp_path / "times"
    pool = workers.Pool(1, name="held", on_event=None)
    sched = pool.schedule(jobs.append_time, every=0.05, args=(str(log),))
    del pool
    gc.collect()
    assert sched.wait(runs=3, timeout=30)  # the handle keeps the pool, and the runs, going
    sched._pool.shutdown()


def test_the_pool_keeps_no_submitted_callable_alive() -> None:
    with workers.Pool(1, on_event=None) as pool:
        holder = jobs.Holder(7)
        ref = weakref.ref(holder)
        assert pool.submit(holder.get).result(30) == 7
        del holder
        gc.collect()
        assert ref() is None, "the pool keeps a bound method's instance alive"


def test_big_callables_are_not_cached_twice() -> None:
    # The caller keeps its partials (20 MiB in all); the pool must not keep a pickled copy of each.
    parts = [functools.partial(jobs.size, b"x" * 2**20, i) for i in range(20)]
    with workers.Pool(1, on_event=None) as pool:
        pool.submit(jobs.add, 1, 1).result(30)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i, part in enumerate(parts):
                assert pool.submit(part).result(30) == 2**20 + i
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
    assert grown < 4 * 2**20, f"the parent kept {grown / 2**20:.1f} MiB after 20 MiB of callables"


# -- what a dying worker is blamed for ------------------------------------------------------------


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_job_written_to_a_worker_killed_before_reading_it_runs_on_the_next(
    method: str, events: Events
) -> None:
    name = f"unread-{method}"
    with workers.Pool(1, start_method=method, name=name, on_event=events) as pool:
        assert pool.submit(jobs.add, 1, 1).result(30) == 2  # the worker is up and idle
        pid = _one_worker(name)
        os.kill(pid, signal.SIGSTOP)  # it cannot read its pipe any more
        wait_until(lambda: proc_state(pid) == "T", what="the worker to stop")
        fut = pool.submit(jobs.getpid)  # written straight to the stopped, idle worker
        os.kill(pid, signal.SIGKILL)
        ran_in = fut.result(30)  # never started there: it runs on the replacement
        assert ran_in != pid
        assert pool.stats().crashed == 0
    assert not events.of(PoolEventKind.WORKER_CRASHED)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_job_the_worker_started_is_the_one_that_fails(method: str, tmp_path: Path) -> None:
    name = f"started-{method}"
    flag = tmp_path / "started"
    with workers.Pool(1, start_method=method, name=name, on_event=None) as pool:
        fut = pool.submit(jobs.write_pid_then_sleep, str(flag), 60)
        wait_until(flag.exists, what="the job to start")
        os.kill(int(flag.read_text()), signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            fut.result(30)
        assert pool.submit(jobs.add, 2, 3).result(30) == 5


def test_a_job_whose_argument_kills_the_worker_on_cleanup_fails_itself_not_the_next(
    tmp_path: Path,
) -> None:
    with workers.Pool(1, on_event=None) as pool:
        culprit = pool.submit(jobs.take, jobs.ExitsOnDel())
        with pytest.raises(WorkerCrashed):
            culprit.result(30)
        # The next job is innocent: it runs on the replacement and succeeds.
        assert pool.submit(jobs.add, 1, 2).result(30) == 3


def test_workers_killed_from_outside_while_starting_never_break_the_pool(
    tmp_path: Path, events: Events
) -> None:
    gate = tmp_path / "gate"
    name = "killed-starting"
    with workers.Pool(
        1, name=name, initializer=jobs.wait_for_path, initargs=(str(gate),), on_event=events
    ) as pool:
        killed: set[int] = set()
        for _ in range(4):  # more than the 3 failed starts in a row that break a pool
            found: set[int] = set()

            def new_worker(found: set[int] = found) -> bool:
                found.update(titled(f"procman: worker 1 ({name})") - killed)
                return bool(found)

            wait_until(new_worker, what="a new worker")
            pid = found.pop()
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            events.wait(
                lambda items: sum(e.kind is PoolEventKind.WORKER_EXITED for e in items) >= len(killed)
            )
        gate.touch()
        assert pool.submit(jobs.add, 20, 22).result(30) == 42
        assert not pool.broken


# -- callbacks and hooks that misbehave -----------------------------------------------------------


def test_a_done_callback_raising_systemexit_does_not_stop_the_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    with workers.Pool(1, on_event=None) as pool:
        fut = pool.submit_after(0.2, jobs.add, 1, 1)  # cannot be done before the callback is added
        fut.add_done_callback(lambda f: sys.exit(3))
        assert fut.result(30) == 2
        assert pool.submit(jobs.add, 2, 2).result(30) == 4  # the I/O thread lives on
    assert any("exception calling callback" in r.getMessage() for r in caplog.records)


def test_an_event_hook_raising_systemexit_keeps_getting_events() -> None:
    seen: list[PoolEventKind] = []

    def hook(event: workers.PoolEvent) -> None:
        seen.append(event.kind)
        raise SystemExit(1)

    with workers.Pool(1, on_event=hook) as pool:
        pool.schedule(jobs.add, every=0.05, args=(1, 2))
        wait_until(lambda: seen.count(PoolEventKind.RUN_DONE) >= 2, what="two run-done events")


# -- jobs handed ahead ----------------------------------------------------------------------------


def test_small_jobs_never_wait_behind_a_long_one_while_a_worker_is_free(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with workers.Pool(2, on_event=None) as pool:
        for fut in [pool.submit(jobs.add, i, 1) for i in range(3000)]:  # tiny: jobs get handed ahead
            fut.result(30)
        long = pool.submit(jobs.wait_for_path, str(gate))
        small = [pool.submit(jobs.add, i, 2) for i in range(200)]
        # Some of these went to the long job's worker, behind it; the other worker takes them back.
        _, not_done = concurrent.futures.wait(small, timeout=30)
        assert not not_done, f"{len(not_done)} small jobs stuck behind the long one"
        assert not long.done()
        gate.touch()
        assert long.result(60) is None


# -- results are unpickled by whoever asks ----------------------------------------------------------


def test_a_result_slow_to_unpickle_stalls_nothing_but_its_reader(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with workers.Pool(2, on_event=None) as pool:
        slow = pool.submit(jobs.returns_slow_to_load, str(gate))
        _, not_done = concurrent.futures.wait([slow], timeout=30)  # done, not unpickled yet
        assert not not_done
        assert [pool.submit(jobs.add, i, i).result(30) for i in range(5)] == [0, 2, 4, 6, 8]
        assert pool.submit_after(0.05, jobs.add, 1, 1).result(30) == 2  # timers run too
        gate.touch()
        assert slow.result(30) == "rebuilt"  # unpickled here, in this thread


def test_a_hostile_result_is_never_unpickled_unless_asked_for() -> None:
    with workers.Pool(1, on_event=None) as pool:
        hostile = pool.submit(jobs.returns_hostile)
        _, not_done = concurrent.futures.wait([hostile], timeout=30)
        assert not not_done and hostile.done()
        assert pool.submit(jobs.add, 2, 2).result(30) == 4  # the host lives on


def test_a_pool_short_of_file_descriptors_runs_with_the_workers_it_could_start(tmp_path: Path) -> None:
    # 30 workers need ~200 descriptors; with 60 only a few start. The pool must run jobs on those
    # (and keep trying for the rest), not break because the others failed to start.
    script = tmp_path / "short.py"
    script.write_text(
        "import operator, resource, workers\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (60, 60))\n"
        "with workers.Pool(30, on_event=None) as pool:\n"
        "    print(pool.submit(operator.add, 1, 2).result(30), pool.broken, flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "False"]
