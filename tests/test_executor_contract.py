"""workers.Pool against the concurrent.futures.Executor contract, on real worker processes.

The behaviours CPython checks for ProcessPoolExecutor (Lib/test/test_concurrent_futures/:
executor.py, test_process_pool.py, test_shutdown.py, test_wait.py, test_as_completed.py,
test_future.py), rewritten for Pool. Every wait is bounded, and jobs that must still be going when
a test looks wait at a gate (a file the test creates), never on a sleep that is hoped long enough.

Where Pool departs from ProcessPoolExecutor on purpose (README, "workers in one screen"):

- a worker that dies fails only its own job with WorkerCrashed and the pool goes on, where
  ProcessPoolExecutor breaks (BrokenProcessPool for every pending future and every later submit);
- a job that cannot be pickled raises SerializationError (a TypeError) from submit() itself, where
  ProcessPoolExecutor pickles in a feeder thread and fails the future (result() raises);
- a result or an exception that cannot be unpickled in the host fails that future alone
  (SerializationError; procman.ChildError carrying the exception's type and message as text),
  where ProcessPoolExecutor's result handler breaks the pool;
- cancel() also cancels a running job (its worker is killed and replaced), where Future.cancel()
  returns False;
- max_workers must be an int >= 1: a non-int is a ValueError at Pool(), where ProcessPoolExecutor
  raises TypeError (at once for a str, at the first submit for a float);
- max_tasks_per_worker works with every start method, fork included (ProcessPoolExecutor refuses
  max_tasks_per_child under fork).

The crash matrix (each fault x each start method, then the next job on the same pool) is the fault
table of tests/test_pool.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    as_completed,
    wait,
)
from pathlib import Path
from typing import Any

import jobs
import pytest
from helpers import wait_until

import procman
import workers

METHODS = ["forkserver", "spawn", "fork"]

pytestmark = pytest.mark.filterwarnings("ignore:start_method='fork' copies a process:RuntimeWarning")


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file jobs wait for (jobs.wait_for_path); the pool fixture opens it before shutting down."""
    return tmp_path / "gate"


@pytest.fixture
def pool(tmp_path: Path, make_pool: Callable[..., workers.Pool]) -> Iterator[workers.Pool]:
    """A 2-worker pool, on local processes and on a Dask cluster in turn (conftest.make_pool)."""
    p = make_pool(2)
    try:
        yield p
    finally:
        for name in ("gate", "gate2"):  # a failed test may leave jobs waiting at its gates
            (tmp_path / name).touch()
        p.shutdown(wait=True, cancel_futures=True, timeout=10)


# Futures in each state, made through Future's public methods (CPython's util.create_future).


def _cancelled() -> Future[Any]:
    """Cancelled, nobody notified yet: wait() and as_completed() do not count it as done."""
    fut: Future[Any] = Future()
    assert fut.cancel()
    return fut


def _cancelled_and_notified() -> Future[Any]:
    fut = _cancelled()
    assert fut.set_running_or_notify_cancel() is False
    return fut


def _succeeded(value: Any = 42) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _failed() -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(OSError("premade"))
    return fut


# -- submit, result, exception -----------------------------------------------------------------


def test_the_pool_is_an_executor_and_its_futures_are_futures(pool: workers.Pool) -> None:
    assert isinstance(pool, concurrent.futures.Executor)
    fut = pool.submit(pow, 2, 8)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(30) == 256
    assert fut.done() and not fut.running() and not fut.cancelled()
    assert fut.exception(0) is None


@pytest.mark.parametrize("method", METHODS)
def test_submit_and_map_on_every_start_method(method: str) -> None:
    with workers.Pool(2, start_method=method, on_event=None) as pool:
        assert pool.submit(pow, 2, 8).result(30) == 256
        assert pool.submit(jobs.add, 2, b=8).result(30) == 10
        assert list(pool.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(30)


def test_submit_passes_every_keyword_even_fn_and_self(pool: workers.Pool) -> None:
    assert pool.submit(dict, [("a", 1)], self=2, fn=3).result(30) == {"a": 1, "self": 2, "fn": 3}
    with pytest.raises(TypeError):
        pool.submit(fn=jobs.add, a=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        pool.submit()  # type: ignore[call-arg]


def test_a_jobs_exception_comes_back_as_itself_with_the_workers_traceback(
    pool: workers.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    fut = pool.submit(jobs.raise_runtime_error, 123)
    with pytest.raises(RuntimeError) as info:
        fut.result(30)
    exc = info.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    assert fut.exception(0) is exc
    cause = exc.__cause__
    assert isinstance(cause, procman.RemoteTraceback)
    assert "raise RuntimeError(value)  # this comment shows in the host" in cause.tb
    # The default excepthook shows the worker's lines too (CPython's test_traceback).
    sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "# this comment shows in the host" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fn", "exc_type"),
    [(jobs.call_sys_exit, SystemExit), (jobs.raise_keyboard_interrupt, KeyboardInterrupt)],
    ids=["SystemExit", "KeyboardInterrupt"],
)
def test_system_exit_and_keyboard_interrupt_in_a_job_come_back_as_themselves(
    pool: workers.Pool, fn: Callable[[], None], exc_type: type[BaseException]
) -> None:
    fut = pool.submit(fn)
    exc = fut.exception(30)  # returned, not raised, as for any other exception
    assert type(exc) is exc_type
    assert isinstance(exc.__cause__, procman.RemoteTraceback)
    with pytest.raises(exc_type):
        fut.result(0)
    # Like ProcessPoolExecutor's workers, ours catch it: the worker lives on.
    assert pool.submit(jobs.add, 1, 1).result(30) == 2
    assert pool.stats().worker_restarts == 0


def test_a_jobs_arguments_are_released_in_the_worker_once_it_ran(pool: workers.Pool, tmp_path: Path) -> None:
    # CPython's test_ressources_gced_in_workers: no later job is needed to let the argument go.
    collected = tmp_path / "collected"
    assert pool.submit(jobs.take, jobs.TouchesOnDel(str(collected))).result(30) == "TouchesOnDel"
    wait_until(collected.exists, what="the worker to drop the job's argument")


# -- map ---------------------------------------------------------------------------------------


def test_map_matches_the_builtin_map_whatever_the_chunksize(pool: workers.Pool) -> None:
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (1, 3, 6, 40, 50):
        assert list(pool.map(pow, range(40), range(40), chunksize=chunksize)) == expected


def test_map_yields_in_input_order_when_jobs_finish_out_of_order(pool: workers.Pool, tmp_path: Path) -> None:
    # The first job waits for a file that the second job writes, so the second certainly finishes
    # first; map still yields the first job's result first.
    released = tmp_path / "released-by-the-second-job"
    log = tmp_path / "log"
    results = pool.map(
        jobs.wait_then_record,
        [str(released), str(tmp_path)],  # the second job's gate (a directory) is already open
        [str(log), str(released)],
        [0, 1],
    )
    assert list(results) == [0, 1]
    assert log.read_text() == "0\n" and released.read_text() == "1\n"


def test_map_raises_a_jobs_exception_when_its_result_is_reached(pool: workers.Pool) -> None:
    results = pool.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)
    with pytest.raises(StopIteration):  # as with the stdlib's generator: the iteration is over
        next(results)


def test_map_of_empty_input_submits_nothing(pool: workers.Pool) -> None:
    assert list(pool.map(jobs.add, [], [])) == []
    assert list(pool.map(jobs.add, [1, 2], [])) == []
    assert list(pool.map(jobs.echo)) == []  # no iterables at all: zip() of nothing
    stats = pool.stats()
    assert stats.done == stats.queued == stats.running == 0


def test_map_stops_with_the_shortest_input(pool: workers.Pool) -> None:
    assert list(pool.map(jobs.add, [1, 2, 3], [10, 20])) == [11, 22]
    assert list(pool.map(jobs.add, itertools.count(), iter([10, 20, 30]))) == [10, 21, 32]


def test_map_timeout_is_raised_by_next_not_by_map(pool: workers.Pool, gate: Path) -> None:
    results = pool.map(jobs.wait_for_path, [str(gate)], timeout=0.05)  # returns at once
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    assert concurrent.futures.TimeoutError is TimeoutError
    # (tests/test_pool.py: the deadline runs from the call, a ready result is still returned)


def test_map_submit_errors_raise_at_the_call(pool: workers.Pool) -> None:
    with socket.socket() as sock, pytest.raises(TypeError):
        pool.map(jobs.echo, [1, sock])
    with pytest.raises(TypeError):
        pool.map(42, [1])  # type: ignore[call-overload]


def test_map_refuses_a_chunksize_below_one(pool: workers.Pool) -> None:
    for chunksize in (0, -1):
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(pow, range(3), range(3), chunksize=chunksize)


def test_map_keeps_no_reference_to_a_result_it_yielded(pool: workers.Pool) -> None:
    for obj in pool.map(jobs.make_holder, range(5)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, "the map iterator still holds the result it yielded"


# -- shutdown ----------------------------------------------------------------------------------


def test_submit_after_shutdown_raises_runtime_error(pool: workers.Pool) -> None:
    pool.shutdown()
    with pytest.raises(RuntimeError) as info:
        pool.submit(pow, 2, 5)
    assert isinstance(info.value, workers.PoolClosed)
    with pytest.raises(RuntimeError):
        pool.map(pow, [2], [5])
    with pytest.raises(RuntimeError):
        pool.submit_after(1, pow, 2, 5)


def test_shutdown_twice_in_any_mode_is_harmless(make_pool: Callable[..., workers.Pool]) -> None:
    pool = make_pool(1)
    fut = pool.submit(jobs.add, 1, 2)
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(wait=False)
    pool.shutdown(cancel_futures=True)
    assert fut.result(0) == 3


def test_shutdown_waits_for_every_queued_job(make_pool: Callable[..., workers.Pool]) -> None:
    # CPython's test_hang_issue12364: far more jobs than workers, then shutdown().
    pool = make_pool(2)
    futs = [pool.submit(jobs.sleep, 0.01) for _ in range(50)]
    pool.shutdown()
    assert [f.result(0) for f in futs] == [0.01] * 50


def test_shutdown_with_more_queued_jobs_than_workers_from_map(make_pool: Callable[..., workers.Pool]) -> None:
    # CPython's test_shutdown_race_issue12456.
    pool = make_pool(2)
    results = pool.map(str, [2] * 3)
    pool.shutdown()
    assert list(results) == ["2"] * 3


def test_shutdown_without_wait_returns_and_pending_jobs_still_complete(
    gate: Path, make_pool: Callable[..., workers.Pool]
) -> None:
    pool = make_pool(1)
    try:
        running = pool.submit(jobs.wait_for_path, str(gate))
        queued = [pool.submit(jobs.add, i, 1) for i in range(5)]
        pool.shutdown(wait=False)
        assert not running.done()  # it returned while the job waits at the gate
        with pytest.raises(workers.PoolClosed):
            pool.submit(jobs.add, 1, 1)
        gate.touch()
        assert running.result(30) is None
        assert [f.result(30) for f in queued] == [1, 2, 3, 4, 5]
    finally:
        gate.touch()
        pool.shutdown()


@pytest.mark.parametrize("wait_for_jobs", [True, False], ids=["wait", "no-wait"])
def test_shutdown_with_cancel_futures_cancels_the_pending_jobs_only(
    wait_for_jobs: bool, gate: Path, tmp_path: Path, make_pool: Callable[..., workers.Pool]
) -> None:
    log = tmp_path / "ran"
    pool = make_pool(1)
    try:
        running = pool.submit(jobs.wait_for_path, str(gate))
        wait_until(running.running, what="the first job to reach the worker")
        pending = [pool.submit(jobs.record, str(log), i) for i in range(40)]
        called: list[Future[Any]] = []
        for fut in pending:
            fut.add_done_callback(called.append)
        if wait_for_jobs:
            # shutdown(wait=True) returns once the running job ends: open the gate once it cancelled
            def open_once_cancelling() -> None:
                wait_until(lambda: any(f.cancelled() for f in pending), what="shutdown to cancel")
                gate.touch()

            opener = threading.Thread(target=open_once_cancelling)
            opener.start()
            pool.shutdown(wait=True, cancel_futures=True)
            opener.join(30)
        else:
            pool.shutdown(wait=False, cancel_futures=True)
            gate.touch()
        assert running.result(30) is None  # the running job was let finish
        _, not_done = wait(pending, timeout=30)
        assert not not_done
    finally:
        gate.touch()
        pool.shutdown()
    cancelled = [f for f in pending if f.cancelled()]
    finished = [f for f in pending if not f.cancelled()]
    # Jobs a worker already held behind the running one are RUNNING and finish (as the stdlib's
    # queued calls do); the others must be cancelled: at least the 40 - 16 a worker may hold.
    assert len(cancelled) >= 40 - 16
    assert all(f.exception(0) is None for f in finished)
    ran = sorted(int(x) for x in log.read_text().split()) if log.exists() else []
    assert ran == [pending.index(f) for f in finished]  # a cancelled job never ran
    for fut in cancelled:
        with pytest.raises(CancelledError):
            fut.result(0)
    assert len(called) == 40 and {id(f) for f in called} == {id(f) for f in pending}


@pytest.mark.timeout(60)
def test_shutdown_right_after_cancelling_a_fresh_job_returns(make_pool: Callable[..., workers.Pool]) -> None:
    # CPython's test_hang_gh94440 (a shutdown that hung on a just-cancelled future).
    pool = make_pool(1)
    assert pool.submit(int).result(30) == 0
    fut = pool.submit(int)
    fut.cancel()
    pool.shutdown(wait=True)
    assert fut.done()


def test_the_context_manager_gives_the_pool_and_shuts_it_down(make_pool: Callable[..., workers.Pool]) -> None:
    with make_pool(2) as pool:
        assert isinstance(pool, workers.Pool)
        assert list(pool.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        last = pool.submit(jobs.sleep, 0.05)
    assert last.done()  # leaving the block waited for it
    with pytest.raises(RuntimeError):
        pool.submit(abs, 1)
    with pytest.raises(KeyError), make_pool(1) as other:  # an error in the block
        inside = other.submit(jobs.add, 1, 1)
        raise KeyError("in the block")
    assert inside.result(0) == 2  # shut down (waiting) before the error went on


def test_submit_from_an_atexit_hook_after_the_exit_shutdown_raises_runtime_error(tmp_path: Path) -> None:
    # CPython's test_submit_after_interpreter_shutdown: the pools shut down at exit, and a hook
    # that runs after that (registered before workers was imported) cannot submit any more.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit, sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})

            @atexit.register
            def run_last():
                try:
                    pool.submit(abs, -1)
                except RuntimeError as exc:
                    print("runtime-error", type(exc).__name__, flush=True)

            import workers
            pool = workers.Pool(1, output="terminal")
            pool.submit(print, "apple")  # never waited for: the exit shutdown runs it
            """
        )
    )
    res = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "apple" in res.stdout
    assert "runtime-error PoolClosed" in res.stdout, res.stdout + res.stderr


def test_shutdown_from_a_done_callback_does_not_hang(tmp_path: Path) -> None:
    # In a child process: the hang takes the pool's I/O thread with it, which no cleanup undoes.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, threading, workers
            pool = workers.Pool(1, on_event=None)
            finished = threading.Event()

            def stop_the_pool(fut):
                try:
                    pool.shutdown(wait=True)
                except RuntimeError:
                    pass  # refusing is as good as returning
                finished.set()

            pool.submit(abs, -1).add_done_callback(stop_the_pool)
            print("finished" if finished.wait(10) else "hung", flush=True)
            os._exit(0)
            """
        )
    )
    res = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert res.stdout.strip() == "finished", res.stdout + res.stderr


# -- wait() ------------------------------------------------------------------------------------


def test_wait_all_completed_counts_a_repeated_future_once(pool: workers.Pool) -> None:
    # CPython's test_20369.
    fut = pool.submit(jobs.add, 1, 2)
    done, not_done = wait([fut, fut], timeout=30, return_when=ALL_COMPLETED)
    assert done == {fut} and not_done == set()


def test_wait_first_completed(pool: workers.Pool, gate: Path) -> None:
    cancelled = _cancelled()
    quick = pool.submit(jobs.add, 21, 21)
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait([cancelled, quick, blocked], timeout=30, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {cancelled, blocked}


def test_wait_first_completed_with_some_already_completed(pool: workers.Pool, gate: Path) -> None:
    notified, succeeded = _cancelled_and_notified(), _succeeded()
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait([notified, succeeded, blocked], timeout=30, return_when=FIRST_COMPLETED)
    assert done == {notified, succeeded} and not_done == {blocked}


def test_wait_first_exception(pool: workers.Pool, tmp_path: Path) -> None:
    gate, gate2 = tmp_path / "gate", tmp_path / "gate2"
    quick = pool.submit(jobs.add, 2, 21)
    failing = pool.submit(jobs.wait_then_raise, str(gate))
    blocked = pool.submit(jobs.wait_for_path, str(gate2))

    def fail_once_quick_is_done() -> None:  # quick is certainly done when failing fails
        quick.result(30)
        gate.touch()

    opener = threading.Thread(target=fail_once_quick_is_done)
    opener.start()
    done, not_done = wait([quick, failing, blocked], timeout=30, return_when=FIRST_EXCEPTION)
    opener.join(30)
    assert done == {quick, failing} and not_done == {blocked}
    assert isinstance(failing.exception(0), ValueError)


def test_wait_first_exception_with_some_already_complete(pool: workers.Pool, gate: Path) -> None:
    succeeded, cancelled, notified = _succeeded(), _cancelled(), _cancelled_and_notified()
    failing = pool.submit(divmod, 21, 0)
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait(
        [succeeded, cancelled, notified, failing, blocked], timeout=30, return_when=FIRST_EXCEPTION
    )
    assert done == {succeeded, notified, failing} and not_done == {cancelled, blocked}


def test_wait_first_exception_with_one_already_failed(pool: workers.Pool, gate: Path) -> None:
    failed = _failed()
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait([failed, blocked], timeout=30, return_when=FIRST_EXCEPTION)
    assert done == {failed} and not_done == {blocked}


def test_wait_first_exception_counts_a_crashed_worker(pool: workers.Pool, gate: Path) -> None:
    crashing = pool.submit(jobs.call_os_exit)
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait([crashing, blocked], timeout=30, return_when=FIRST_EXCEPTION)
    assert done == {crashing} and not_done == {blocked}
    assert isinstance(crashing.exception(0), workers.WorkerCrashed)


def test_wait_all_completed(pool: workers.Pool) -> None:
    premade = [_succeeded(), _cancelled_and_notified(), _failed()]
    failing = pool.submit(divmod, 2, 0)
    product = pool.submit(pow, 2, 5)
    done, not_done = wait([*premade, failing, product], timeout=30, return_when=ALL_COMPLETED)
    assert done == {*premade, failing, product} and not_done == set()


def test_wait_timeout_leaves_the_unfinished_in_not_done(pool: workers.Pool, gate: Path) -> None:
    premade = {_cancelled_and_notified(), _failed(), _succeeded()}
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    done, not_done = wait([*premade, blocked], timeout=0.05, return_when=ALL_COMPLETED)
    assert done == premade and not_done == {blocked}


# -- as_completed() ----------------------------------------------------------------------------


def test_as_completed_yields_every_future_once(pool: workers.Pool) -> None:
    premade = {_cancelled_and_notified(), _failed(), _succeeded()}
    a, b = pool.submit(pow, 2, 21), pool.submit(pow, 7, 6)
    assert set(as_completed([*premade, a, b], timeout=30)) == {*premade, a, b}


def test_as_completed_yields_in_completion_order(pool: workers.Pool, gate: Path) -> None:
    ready = _succeeded()
    slow = pool.submit(jobs.wait_for_path, str(gate))
    fast = pool.submit(jobs.add, 1, 1)
    completed = as_completed([slow, fast, ready], timeout=30)
    assert {next(completed), next(completed)} == {ready, fast}  # slow waits at its gate
    gate.touch()
    assert next(completed) is slow
    with pytest.raises(StopIteration):
        next(completed)


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_raises_timeout_error_with_the_unfinished_count(
    pool: workers.Pool, gate: Path, timeout: float
) -> None:
    premade = {_cancelled_and_notified(), _failed(), _succeeded()}
    blocked = pool.submit(jobs.wait_for_path, str(gate))
    seen = set()
    with pytest.raises(TimeoutError) as info:
        for fut in as_completed([*premade, blocked], timeout=timeout):
            seen.add(fut)
    assert seen == premade
    assert str(info.value) == "1 (of 4) futures unfinished"


def test_as_completed_yields_a_repeated_future_once(pool: workers.Pool) -> None:
    fut = pool.submit(jobs.sleep, 0.05)
    assert list(as_completed(itertools.repeat(fut, 3), timeout=30)) == [fut]


# -- the Future API ----------------------------------------------------------------------------


def test_future_states_from_pending_to_finished(gate: Path, make_pool: Callable[..., workers.Pool]) -> None:
    with make_pool(1) as pool:  # one worker: the second job has to wait
        try:
            running = pool.submit(jobs.wait_for_path, str(gate))
            # A job with a timeout is never held behind another one: it waits in the queue, PENDING.
            pending = pool.submit_job(jobs.add, (1, 2), timeout=60)
            wait_until(running.running, what="the first job to reach the worker")
            assert (running.running(), running.done(), running.cancelled()) == (True, False, False)
            assert (pending.running(), pending.done(), pending.cancelled()) == (False, False, False)
            assert re.fullmatch(r"<JobFuture at 0x[0-9a-f]+ state=pending>", repr(pending))
            assert re.fullmatch(r"<JobFuture at 0x[0-9a-f]+ state=running>", repr(running))
            for fut in (running, pending):
                with pytest.raises(TimeoutError):
                    fut.result(timeout=0)
                with pytest.raises(TimeoutError):
                    fut.exception(timeout=0)
        finally:
            gate.touch()
        assert pending.result(30) == 3
        assert (pending.running(), pending.done(), pending.cancelled()) == (False, True, False)
        assert pending.exception(0) is None
        assert re.fullmatch(r"<JobFuture at 0x[0-9a-f]+ state=finished returned int>", repr(pending))
        failed = pool.submit(jobs.boom)
        assert isinstance(failed.exception(30), KeyError)
        assert re.fullmatch(r"<JobFuture at 0x[0-9a-f]+ state=finished raised KeyError>", repr(failed))


def test_cancel_a_pending_job_but_not_a_finished_one(
    gate: Path, tmp_path: Path, make_pool: Callable[..., workers.Pool]
) -> None:
    log = tmp_path / "ran"
    with make_pool(1) as pool:
        try:
            blocker = pool.submit(jobs.wait_for_path, str(gate))
            pending = pool.submit_job(jobs.record, (str(log), 1), timeout=60)  # never held: PENDING
            called: list[Future[Any]] = []
            pending.add_done_callback(called.append)
            assert pending.cancel() is True
            assert pending.cancelled() and pending.done() and not pending.running()
            assert called == [pending]  # at once, in this thread
            assert pending.cancel() is True  # as Future: cancelling a cancelled future answers True
            with pytest.raises(CancelledError):
                pending.result(0)
            with pytest.raises(CancelledError):
                pending.exception(0)
            assert pending.set_running_or_notify_cancel() is False
            assert re.fullmatch(r"<JobFuture at 0x[0-9a-f]+ state=cancelled>", repr(pending))
        finally:
            gate.touch()
        assert blocker.result(30) is None
        assert blocker.cancel() is False and not blocker.cancelled()
        assert blocker.result(0) is None
    assert called == [pending]  # once, even after the pool went through its queue
    assert not log.exists()  # the cancelled job never ran


def test_done_callbacks_run_once_whether_added_before_or_after_completion(
    pool: workers.Pool, gate: Path
) -> None:
    before: list[Future[Any]] = []
    failed_before: list[BaseException | None] = []
    after: list[tuple[Future[Any], threading.Thread]] = []
    ok = pool.submit(jobs.wait_for_path, str(gate))
    bad = pool.submit(jobs.wait_then_raise, str(gate))
    ok.add_done_callback(before.append)
    bad.add_done_callback(lambda f: failed_before.append(f.exception()))
    gate.touch()
    assert ok.result(30) is None
    with pytest.raises(ValueError):
        bad.result(30)
    ok.add_done_callback(lambda f: after.append((f, threading.current_thread())))
    assert after == [(ok, threading.current_thread())]  # already done: called at once, here
    pool.shutdown()  # whatever callback the pool could still call has been called
    assert before == [ok]
    assert len(failed_before) == 1 and isinstance(failed_before[0], ValueError)
    assert len(after) == 1


def test_a_raising_done_callback_is_logged_and_the_next_ones_still_run(
    pool: workers.Pool, gate: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    seen = threading.Event()
    fut = pool.submit(jobs.wait_for_path, str(gate))
    fut.add_done_callback(lambda f: 1 / 0)
    fut.add_done_callback(lambda f: seen.set())
    gate.touch()
    assert seen.wait(30)  # on the pool's thread, after the raising one
    called: list[Future[Any]] = []
    fut.add_done_callback(lambda f: 1 / 0)  # already done: in this thread
    fut.add_done_callback(called.append)
    assert called == [fut]
    failures = [r for r in caplog.records if "exception calling callback" in r.getMessage()]
    assert len(failures) == 2


# -- errors, and what departs from ProcessPoolExecutor -------------------------------------------


def test_errors_subclass_the_builtins_executor_users_already_catch() -> None:
    assert issubclass(workers.PoolClosed, RuntimeError)  # submit after shutdown
    assert issubclass(workers.SerializationError, TypeError)  # what pickle raises for such objects
    assert issubclass(workers.JobTimeout, TimeoutError)
    assert issubclass(workers.WorkerCrashed, RuntimeError)
    assert issubclass(workers.PoolBroken, RuntimeError)
    assert issubclass(workers.PoolFull, RuntimeError)


def test_a_pool_whose_initializer_keeps_failing_is_a_broken_executor() -> None:
    pool = workers.Pool(1, initializer=jobs.init_fails, on_event=None)
    try:
        fut = pool.submit(jobs.add, 1, 2)
        with pytest.raises(concurrent.futures.BrokenExecutor):
            fut.result(30)
    finally:
        pool.shutdown(timeout=10)


def test_an_unpicklable_argument_raises_at_submit_and_queues_nothing(pool: workers.Pool) -> None:
    # ProcessPoolExecutor pickles in a feeder thread and fails the future; here submit() raises.
    with socket.socket() as sock, pytest.raises(TypeError) as info:
        pool.submit(jobs.take, sock)
    assert isinstance(info.value, workers.SerializationError)
    assert "positional argument 0" in str(info.value)
    assert pool.submit(jobs.add, 1, 1).result(30) == 2
    stats = pool.stats()
    assert (stats.done, stats.failed, stats.queued) == (1, 0, 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("fault", "exitcode"), [(jobs.call_os_exit, 3), (jobs.segfault, -11)], ids=["os-exit", "segfault"]
)
def test_a_worker_crash_fails_its_own_future_not_the_queued_ones(
    method: str, fault: Callable[[], None], exitcode: int
) -> None:
    # ProcessPoolExecutor breaks: every pending future and every later submit get BrokenProcessPool.
    with workers.Pool(1, start_method=method, on_event=None) as pool:
        crash = pool.submit(fault)
        queued = [pool.submit(jobs.add, i, 1) for i in range(5)]  # behind it on the only worker
        with pytest.raises(workers.WorkerCrashed) as info:
            crash.result(30)
        assert info.value.exitcode == exitcode
        assert [f.result(30) for f in queued] == [1, 2, 3, 4, 5]
        assert not pool.broken
        assert pool.submit(pow, 2, 8).result(30) == 256


# -- construction: max_workers, initializer, max_tasks_per_worker --------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, "max_workers=0"),
        ({"max_workers": -1}, "max_workers=-1"),
        ({"max_workers": 2.0}, "max_workers=2.0"),
        ({"max_workers": "2"}, "max_workers='2'"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker=0"),
        ({"max_tasks_per_worker": 1.5}, "max_tasks_per_worker=1.5"),
    ],
)
def test_worker_counts_must_be_positive_ints(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        workers.Pool(**kwargs)


def test_an_initializer_must_be_callable() -> None:
    with pytest.raises(TypeError, match="not callable"):
        workers.Pool(1, initializer=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_the_initializer_runs_with_its_initargs_in_every_worker(method: str) -> None:
    with workers.Pool(
        2, start_method=method, initializer=jobs.init_worker, initargs=("ready",), on_event=None
    ) as pool:
        futs = [pool.submit(jobs.initialized) for _ in range(10)]
        tags = [f.result(30) for f in futs]
    for tag in tags:  # "ready:<pid>": set by the initializer in a worker, not in this process
        assert tag is not None and tag.startswith("ready:") and tag != f"ready:{os.getpid()}"


@pytest.mark.parametrize("method", METHODS)
def test_max_tasks_per_worker_replaces_a_worker_after_that_many_jobs(method: str) -> None:
    with workers.Pool(1, start_method=method, max_tasks_per_worker=3, on_event=None) as pool:
        pids = [pool.submit(jobs.getpid).result(30) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]


@pytest.mark.parametrize(("n_workers", "max_tasks", "n_jobs"), [(1, 2, 6), (2, 2, 8), (2, 1, 9)])
def test_jobs_queued_while_workers_retire_all_run(n_workers: int, max_tasks: int, n_jobs: int) -> None:
    # CPython's gh-115634: a backlog queued while workers reach their task limit.
    with workers.Pool(n_workers, max_tasks_per_worker=max_tasks, on_event=None) as pool:
        futs = [pool.submit(pow, i, 2) for i in range(n_jobs)]
        assert [f.result(30) for f in futs] == [i * i for i in range(n_jobs)]


# -- asyncio -----------------------------------------------------------------------------------


def test_run_in_executor_and_awaiting_futures(pool: workers.Pool) -> None:
    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(pool, jobs.add, 2, 3)
        b = await pool.submit(jobs.add, 4, 5)
        many = await asyncio.gather(*(pool.submit(jobs.echo, i) for i in range(5)))
        with pytest.raises(KeyError):
            await loop.run_in_executor(pool, jobs.boom)
        with pytest.raises(KeyError):
            await pool.submit(jobs.boom)
        return a, b, many

    assert asyncio.run(main()) == (5, 9, [0, 1, 2, 3, 4])


def test_an_asyncio_timeout_cancels_the_awaited_job(pool: workers.Pool, gate: Path) -> None:
    async def main() -> Future[Any]:
        fut = pool.submit(jobs.wait_for_path, str(gate))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(fut), 0.05)
        return fut

    fut = asyncio.run(main())
    assert fut.cancelled()  # asyncio cancelled it, and with it the running job
    wait_until(lambda: pool.stats().cancelled == 1, what="the job's worker to be killed")
    assert pool.submit(jobs.add, 1, 1).result(30) == 2
