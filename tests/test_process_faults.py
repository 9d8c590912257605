"""Faults around the worker processes themselves and what multiprocessing hands them.

Each test failed before the fix it guards: a worker reaped by someone else (the I/O thread spun
forever), a killed forkserver (every exit read as EXIT(255), blamed on the job), a stdlib
Manager's proxies in a job (AuthenticationError), multiprocessing's Queue/Lock/Event in initargs
(refused at Pool()). They synchronize on futures, files and process states, never on sleeps.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import jobs
import multiprocess
import pytest
from helpers import Events, pid_alive, run_script, titled, wait_until

import workers
from procman._child import wire as _wire
from workers import PoolEventKind, SerializationError, WorkerCrashed

METHODS = ["forkserver", "fork", "spawn"]
TESTS = Path(__file__).parent
PACKAGES = [multiprocessing, multiprocess]


def _busy_job(pool: workers.Pool, tmp: Path) -> tuple[workers.JobFuture[int], int]:
    """A job that has started in a worker (it wrote its pid), and that worker's pid."""
    path = tmp / "pid"
    fut = pool.submit(jobs.write_pid_then_sleep, str(path), 60)
    wait_until(lambda: path.exists() and bool(path.read_text()), what="the job to start")
    return fut, int(path.read_text())


def _run_script(tmp_path: Path, code: str, *args: str) -> dict[str, object]:
    """Run ``code`` in a new session; return the JSON it printed last. Nothing may outlive it."""
    proc = run_script(tmp_path, code, args=args, pythonpath=TESTS)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the script printed nothing (exit {proc.returncode}); stderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


# -- 1. a worker reaped by someone else -----------------------------------------------------

REAPED_ELSEWHERE = """
    import json, os, signal, sys, threading, time
    import jobs, workers
    from helpers import wait_until

    method, how = sys.argv[1:3]
    if how == "sigchld-ignored":  # the kernel reaps every child at once
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    else:  # a thread of the host reaps every child

        def reap():
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:  # none right now: look again shortly
                    time.sleep(0.005)

        threading.Thread(target=reap, daemon=True).start()
    out = {}
    pool = workers.Pool(1, start_method=method, on_event=None)
    try:
        path = "pid"
        fut = pool.submit(jobs.write_pid_then_sleep, path, 60)
        wait_until(lambda: os.path.exists(path) and bool(open(path).read()), what="the job to start")
        os.kill(int(open(path).read()), signal.SIGKILL)
        try:
            fut.result(timeout=20)
        except BaseException as exc:
            out["error"] = type(exc).__name__
            out["message"] = str(exc)
            out["exitcode"] = getattr(exc, "exitcode", None)
        # The host's CPU time over a window in which it has nothing to do but run one small job:
        # an I/O thread polling a pidfd that stays readable would use all of it.
        wall, cpu = time.monotonic(), time.process_time()
        out["next"] = pool.submit(jobs.add, 2, 3).result(timeout=30)
        time.sleep(0.5)  # the window to measure, not a wait for anything
        out["cpu_ratio"] = (time.process_time() - cpu) / (time.monotonic() - wall)
    except BaseException as exc:
        out["failed"] = repr(exc)
        print(json.dumps(out), flush=True)
        os._exit(1)  # a spinning I/O thread may keep shutdown from returning
    print(json.dumps(out), flush=True)
    pool.shutdown(wait=True, cancel_futures=True, timeout=20)
"""


@pytest.mark.parametrize("how", ["sigchld-ignored", "waitpid-thread"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_reaped_by_someone_else_fails_its_job_once(tmp_path: Path, method: str, how: str) -> None:
    out = _run_script(tmp_path, REAPED_ELSEWHERE, method, how)
    assert "failed" not in out, out
    assert out["error"] == "WorkerCrashed", out
    message = str(out["message"])
    if how == "sigchld-ignored":
        assert "collected by someone else" in message, message
        assert out["exitcode"] == _wire.STATUS_REAPED_ELSEWHERE
    else:  # the reaping thread usually wins the race for the status; if not, the status is known
        assert "collected by someone else" in message or "SIGKILL" in message, message
    assert "os._exit" not in message, message
    assert out["next"] == 5  # a replacement worker runs the next job
    assert isinstance(out["cpu_ratio"], float) and out["cpu_ratio"] < 0.5, out


# -- 2. the forkserver killed ---------------------------------------------------------------


def test_a_killed_forkserver_is_not_blamed_on_the_job(tmp_path: Path, events: Events) -> None:
    from multiprocess import forkserver

    with workers.Pool(1, start_method="forkserver", on_event=events) as pool:
        fut, worker = _busy_job(pool, tmp_path)
        server = forkserver._forkserver._forkserver_pid
        assert server in titled("procman: forkserver")
        os.kill(server, signal.SIGKILL)
        try:
            os.kill(worker, signal.SIGKILL)  # its parent-death signal may have been first
        except ProcessLookupError:
            pass
        err = fut.exception(timeout=20)
        assert isinstance(err, WorkerCrashed), err
        message = str(err)
        assert "forkserver died" in message, message
        assert "os._exit" not in message and "EXIT(255)" not in message, message
        assert err.exitcode == _wire.STATUS_FORKSERVER_DIED
        events.wait(lambda evs: any(e.kind is PoolEventKind.WORKER_CRASHED for e in evs))
        (crash,) = events.of(PoolEventKind.WORKER_CRASHED)
        assert "forkserver died" in crash.reason
        # New workers need a new forkserver, started on demand.
        assert pool.submit(jobs.add, 1, 2).result(timeout=30) == 3
        assert pool.submit(jobs.getpid).result(timeout=30) != worker
        restarted = forkserver._forkserver._forkserver_pid
        assert restarted not in (None, server)
        assert restarted in titled("procman: forkserver")  # preloads and SIGTERM guard as before
    assert not pid_alive(server)


# -- 3. stdlib (and multiprocess) Manager proxies in jobs ---------------------------------------


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("method", METHODS)
def test_manager_proxies_work_in_jobs(method: str, package: ModuleType) -> None:
    with package.Manager() as manager:
        mapping = manager.dict()
        queue = manager.Queue()
        with workers.Pool(1, start_method=method, on_event=None) as pool:
            pool.submit(jobs.set_item, mapping, "k", 1).result(timeout=30)
            assert mapping["k"] == 1
            pool.submit(jobs.put, queue, "item").result(timeout=30)
            assert queue.get(timeout=10) == "item"
        del mapping, queue


# -- 4. multiprocessing's Queue, Lock and Event in initargs --------------------------------------


@pytest.fixture
def stdlib_tracker() -> Iterator[None]:
    """Stop the stdlib's resource tracker the test started (its semaphores are gone by then)."""
    yield
    gc.collect()  # the semaphores' finalizers unregister them from the tracker
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("method", METHODS)
def test_initargs_may_hold_a_queue_a_lock_and_an_event(
    method: str, package: ModuleType, stdlib_tracker: None
) -> None:
    ctx = package.get_context(method)
    queue, lock, event = ctx.Queue(), ctx.Lock(), ctx.Event()
    with workers.Pool(
        2, start_method=method, initializer=jobs.keep, initargs=(queue, lock, event), on_event=None
    ) as pool:
        pool.submit(jobs.kept_put, 0, "from a job").result(timeout=30)
        assert queue.get(timeout=10) == "from a job"
        assert pool.submit(jobs.kept_lock_free, 1).result(timeout=30)
        with lock:  # one lock, shared: a job sees it taken
            assert not pool.submit(jobs.kept_lock_free, 1).result(timeout=30)
        assert not pool.submit(jobs.kept_is_set, 2).result(timeout=30)
        event.set()
        assert pool.submit(jobs.kept_is_set, 2).result(timeout=30)
    queue.close()
    queue.join_thread()


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_initargs_made_in_the_fork_context_are_refused_with_the_fix(method: str, package: ModuleType) -> None:
    queue = package.get_context("fork").Queue()  # multiprocessing.Queue() on Linux before 3.14
    with pytest.raises(SerializationError) as info:
        workers.Pool(1, start_method=method, initializer=jobs.keep, initargs=(1, queue))
    message = str(info.value)
    assert "initargs item 1" in message, message
    assert "'fork' context" in message, message
    assert f"{package.__name__}.get_context({method!r}).Queue()" in message, message
    del info, queue  # the error's traceback holds the queue, whose pipes the leak check counts
    gc.collect()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_an_unpicklable_initarg_fails_at_pool_naming_it(method: str) -> None:
    with pytest.raises(SerializationError) as info:
        workers.Pool(1, start_method=method, initializer=jobs.keep, initargs=(1, (i for i in "ab")))
    message = str(info.value)
    assert "initargs item 1" in message and "generator" in message, message


def test_initargs_with_a_default_context_queue_are_inherited_under_fork() -> None:
    queue = multiprocessing.Queue()  # the fork context on Linux before 3.14: fine for fork
    with workers.Pool(
        1, start_method="fork", initializer=jobs.keep, initargs=(queue,), on_event=None
    ) as pool:
        pool.submit(jobs.kept_put, 0, 7).result(timeout=30)
        assert queue.get(timeout=10) == 7
    queue.close()
    queue.join_thread()
    del pool, queue
    gc.collect()  # the pool's worker records are cyclic garbage that holds the initargs


def test_reaped_and_forkserver_statuses_are_described() -> None:
    assert "collected by someone else" in _wire.describe_exit(_wire.STATUS_REAPED_ELSEWHERE)
    assert "forkserver died" in _wire.describe_exit(_wire.STATUS_FORKSERVER_DIED)
    assert _wire.exit_signal(_wire.STATUS_FORKSERVER_DIED) is None
