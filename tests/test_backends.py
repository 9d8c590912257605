"""One fault table, two backends: worker processes of this machine and a Dask cluster.

Each test of the first part runs on both (conftest.make_pool): what a user sees of a crash, a
timeout, a cancel, a timed job or a schedule does not depend on where the job ran. The second part
is the Dask backend's own: capacity that follows the cluster, what it refuses and why, a local
cluster made for a script without a main guard. The cluster is real (tests/dask_host.py: a
LocalCluster of 2 workers on loopback), and so are the kills.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask_host
import jobs
import pytest
from conftest import DASK_WORKERS, PoolMaker
from helpers import proc_state, wait_until

import workers
from workers import JobTimeout, WorkerCrashed

ROOT = Path(__file__).resolve().parent.parent


def _pid_in(path: Path) -> int:
    """The pid a job wrote to ``path`` (jobs.write_pid_then_sleep), once it is there."""
    found: list[int] = []

    def written() -> bool:
        text = path.read_text() if path.exists() else ""
        if text.strip().isdigit():
            found.append(int(text))
            return True
        return False

    wait_until(written, timeout=60, what=f"a job to write its pid to {path.name}")
    return found[0]


def _gone(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")


def _names_the_worker(kind: str, message: str) -> bool:
    if kind == "dask":
        return re.search(r"Dask worker tcp://127\.0\.0\.1:\d+", message) is not None
    return re.search(r"pid \d+", message) is not None


# -- the fault table, on both backends --------------------------------------------------------------


def test_a_job_that_ends_its_process_fails_alone_and_the_next_one_runs(make_pool: PoolMaker) -> None:
    pool = make_pool(1)
    fut = pool.submit(jobs.call_os_exit)
    with pytest.raises(WorkerCrashed) as info:
        fut.result(60)
    assert "call_os_exit" in str(info.value)
    assert _names_the_worker(make_pool.kind, str(info.value)), str(info.value)
    assert pool.submit(jobs.add, 1, 2).result(60) == 3
    assert pool.stats().crashed == 1


def test_a_worker_killed_from_outside_mid_job_fails_that_job_only(
    make_pool: PoolMaker, tmp_path: Path
) -> None:
    pool = make_pool(2)
    gate = tmp_path / "gate"
    other = pool.submit(jobs.wait_then_record, str(gate), str(tmp_path / "other"), 7)
    victim = pool.submit(jobs.write_pid_then_sleep, str(tmp_path / "pid"), 120)
    pid = _pid_in(tmp_path / "pid")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        victim.result(60)
    assert "write_pid_then_sleep" in str(info.value)
    assert _names_the_worker(make_pool.kind, str(info.value)), str(info.value)
    assert not other.done()  # the job running beside it goes on
    gate.touch()
    assert other.result(60) == 7
    assert pool.submit(jobs.add, 2, 3).result(60) == 5


def test_a_job_past_its_timeout_fails_at_once_and_its_process_is_killed(
    make_pool: PoolMaker, tmp_path: Path
) -> None:
    pool = make_pool(1)
    fut = pool.submit_job(jobs.write_pid_then_sleep, (str(tmp_path / "pid"), 120), timeout=1.0)
    pid = _pid_in(tmp_path / "pid")
    with pytest.raises(JobTimeout, match=r"ran past its timeout of 1\.0s"):
        fut.result(60)
    wait_until(lambda: _gone(pid), timeout=30, what="the process that ran the job to be killed")
    assert pool.submit(jobs.add, 1, 1).result(60) == 2
    assert pool.stats().timed_out == 1


def test_cancel_of_a_running_job_cancels_it_and_kills_its_process(
    make_pool: PoolMaker, tmp_path: Path
) -> None:
    pool = make_pool(1)
    fut = pool.submit(jobs.write_pid_then_sleep, str(tmp_path / "pid"), 120)
    pid = _pid_in(tmp_path / "pid")
    assert fut.running()
    assert fut.cancel()
    assert fut.cancelled()
    wait_until(lambda: _gone(pid), timeout=30, what="the process that ran the job to be killed")
    assert pool.submit(jobs.add, 4, 4).result(60) == 8
    wait_until(lambda: pool.stats().cancelled == 1, what="the cancel to be counted")


def test_a_jobs_exception_and_output_come_back_from_either_backend(
    make_pool: PoolMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = make_pool(1, output="terminal")
    with pytest.raises(RuntimeError) as info:
        pool.submit(jobs.raise_runtime_error, 5).result(60)
    assert info.value.args == (5,)
    assert "this comment shows in the host" in getattr(info.value.__cause__, "tb", "")
    pool.submit(print, "printed", "by a job").result(60)
    pool.shutdown()  # what jobs printed is shown by then
    assert "print | printed by a job" in capsys.readouterr().out


def test_timed_jobs_start_at_their_time_never_before(make_pool: PoolMaker) -> None:
    pool = make_pool(2)
    t0 = time.time()
    delays = [0.4, 0.1, 0.25]
    afters = [pool.submit_after(d, time.time) for d in delays]
    at = pool.submit_at(t0 + 0.3, time.time)
    started = [f.result(60) for f in afters]
    for delay, when in zip(delays, started, strict=True):
        assert when >= t0 + delay, f"a job due after {delay}s started {when - t0:.3f}s after submit"
    assert at.result(60) >= t0 + 0.3
    assert pool.stats().lateness_p50 is not None


def test_an_every_schedule_runs_its_runs_on_the_backend(make_pool: PoolMaker, tmp_path: Path) -> None:
    pool = make_pool(1)
    log = tmp_path / "runs"
    sched = pool.schedule(jobs.append_time, every=0.1, args=(str(log),))
    wait_until(lambda: log.exists() and len(log.read_text().split()) >= 3, timeout=60, what="three runs")
    sched.cancel()
    times = [float(t) for t in log.read_text().split()]
    assert times == sorted(times)


def test_shutdown_with_timed_jobs_pending_cancels_them_and_ends_the_schedules(make_pool: PoolMaker) -> None:
    pool = make_pool(1)
    later = pool.submit_after(3600, jobs.add, 1, 2)
    sched = pool.schedule(jobs.add, every=3600, args=(1, 2))
    assert pool.submit(jobs.add, 2, 2).result(60) == 4
    pool.shutdown()
    assert later.cancelled()
    assert sched.state is workers.ScheduleState.CANCELLED


@pytest.mark.slow
def test_a_cron_schedule_fires_on_the_minute_on_both_backends(dask_address: str | None) -> None:
    """Both backends at once: a cron schedule's first run comes at the next minute (within 60 s)."""
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    local = PoolMaker("local", None)
    dask = PoolMaker("dask", dask_address)
    try:
        scheds = [maker(1).schedule(time.time, cron="* * * * *") for maker in (local, dask)]
        wait_until(lambda: all(s.runs >= 1 for s in scheds), timeout=75, what="each schedule's first run")
        for sched in scheds:
            ran = sched.last_result
            assert isinstance(ran, float)
            assert time.localtime(ran).tm_sec < 30  # at the top of a minute, not any time
    finally:
        local.close()
        dask.close()


def _run_script(code: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


SCRIPT = """
    import os, workers
    address = os.environ.get("TEST_DASK_ADDRESS")
    pool = workers.Pool(2, backend=workers.DaskBackend(address) if address else None)
    offset = 10

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def double(x):
        return 2 * x

    print(pool.submit(lambda x: x + offset, 1).result(60))
    print(pool.submit(double, 21).result(60))
    print(list(pool.map(double, range(4))))
    p = pool.submit(Point, 1, 2).result(60)
    print(type(p) is Point, p.x + p.y)
    pool.submit(print, "hello from a job").result(60)
"""


@pytest.mark.parametrize("kind", ["local", "dask"])
def test_lambdas_closures_and_main_functions_in_a_script_without_main_guard(
    kind: str, dask_address: str | None
) -> None:
    if kind == "dask" and dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    env = {"TEST_DASK_ADDRESS": dask_address or ""} if kind == "dask" else {}
    out = _run_script(SCRIPT, env).splitlines()
    assert out[:4] == ["11", "42", "[0, 2, 4, 6]", "True 3"]
    assert "print | hello from a job" in out


# -- the Dask backend's own --------------------------------------------------------------------------


@pytest.fixture
def dask_backend(dask_address: str | None) -> workers.DaskBackend:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    return workers.DaskBackend(dask_address)


@pytest.fixture
def extra_worker(dask_address: str | None) -> Iterator[Any]:
    """Starts one more Dask worker on the session's cluster when called; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", str(dask_address)]
        cmd += ["--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
        # The jobs' module must be importable there, as on every Dask worker (README).
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_worker_joining_while_jobs_are_queued_raises_the_capacity(
    dask_backend: workers.DaskBackend, extra_worker: Any, tmp_path: Path
) -> None:
    with workers.Pool(backend=dask_backend, on_event=None) as pool:
        wait_until(lambda: pool.stats().workers == DASK_WORKERS, timeout=60, what="the cluster's threads")
        gate = tmp_path / "gate"
        futs = [pool.submit(jobs.wait_then_record, str(gate), str(tmp_path / f"r{i}"), i) for i in range(3)]
        wait_until(lambda: pool.stats().running == DASK_WORKERS, timeout=60, what="two jobs running")
        assert pool.stats().queued == 1
        extra_worker()
        wait_until(lambda: pool.stats().workers == DASK_WORKERS + 1, timeout=60, what="the new thread")
        wait_until(lambda: pool.stats().running == 3, timeout=60, what="the queued job on the new worker")
        gate.touch()
        assert [f.result(60) for f in futs] == [0, 1, 2]


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ({"initializer": jobs.init_worker, "initargs": ("x",)}, "register a distributed.WorkerPlugin"),
        ({"max_tasks_per_worker": 5}, "give them a lifetime instead"),
        ({"max_memory_mb": 100}, "set the workers' memory_limit"),
    ],
)
def test_options_that_cannot_hold_on_dask_are_refused_with_the_reason(
    dask_backend: workers.DaskBackend, option: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        workers.Pool(2, backend=dask_backend, **option)


def test_a_scheduler_that_blames_other_jobs_for_a_death_is_refused(dask_address: str | None) -> None:
    if dask_address is None:  # (and Dask's process-wide threads and files are made before this test)
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    with dask_host.running(1, defaults=True) as host, pytest.raises(workers.DaskBackendError) as info:
        workers.Pool(backend=workers.DaskBackend(host.address), on_event=None)
    message = str(info.value)
    assert "allowed-failures=3" in message and "worker-saturation=1.1" in message
    assert "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0" in message


@pytest.fixture
def one_worker_cluster(dask_address: str | None) -> Iterator[str]:
    """A LocalCluster of a single worker (its own process tree), for the races a small cluster has."""
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    with dask_host.running(1) as host:
        yield host.address


@pytest.mark.parametrize("end", ["cancel", "timeout"])
def test_a_job_handed_while_the_only_worker_is_killed_for_another_waits_for_its_replacement(
    one_worker_cluster: str, tmp_path: Path, end: str
) -> None:
    """The next job, handed the moment the only worker is being killed for the last one, must not
    land in that worker's queue (and die with it): it runs on the worker its nanny starts."""
    with workers.Pool(1, backend=workers.DaskBackend(one_worker_cluster), on_event=None) as pool:
        timeout = 1.0 if end == "timeout" else None
        first = pool.submit_job(jobs.write_pid_then_sleep, (str(tmp_path / "pid"), 120), timeout=timeout)
        pid = _pid_in(tmp_path / "pid")
        if end == "cancel":
            assert first.cancel()
        else:
            with pytest.raises(JobTimeout):
                first.result(60)
        nxt = pool.submit(jobs.getpid)  # handed at once: the slot was replaced when the first failed
        assert nxt.result(60) != pid
        wait_until(lambda: _gone(pid), what="the worker that ran the first job to be gone")


def test_workers_with_other_versions_are_refused(
    dask_backend: workers.DaskBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procman._child import dask_task

    monkeypatch.setattr(dask_task, "_stamp", "procworks 0.0.1, dill 0.0, Python 3.0")
    with pytest.raises(workers.DaskBackendError, match=r"other versions than this process .*has procworks"):
        workers.Pool(backend=dask_backend, on_event=None)


def test_a_scheduler_that_does_not_answer_is_a_clear_error_and_leaves_nothing(
    dask_address: str | None,
) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    with pytest.raises(workers.DaskBackendError, match=r"cannot connect to the Dask scheduler at tcp://"):
        workers.Pool(backend=workers.DaskBackend("tcp://127.0.0.1:9", connect_timeout=2), on_event=None)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "text"),
    [
        ((42,), {}, TypeError, "must be a scheduler address"),
        (("localhost:8786",), {}, ValueError, "is not a scheduler address"),
        (("tcp://h:1",), {"n_workers": 2}, ValueError, "sizes the local cluster only"),
        ((), {"n_workers": 0}, ValueError, "n_workers"),
        ((), {"connect_timeout": -1}, ValueError, "connect_timeout"),
    ],
)
def test_a_bad_dask_backend_is_refused_where_it_is_made(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    pytest.importorskip("distributed")
    with pytest.raises(error, match=text):
        workers.DaskBackend(*args, **kwargs)


def _processes_with_env(marker: str) -> set[int]:
    found = set()
    needle = f"PROCWORKS_TEST_MARK={marker}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def test_a_local_cluster_made_for_a_script_without_main_guard_runs_and_leaves_nothing(
    dask_address: str | None,
) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    marker = uuid.uuid4().hex
    code = """
        import workers
        pool = workers.Pool(backend=workers.DaskBackend(n_workers=2))
        def square(x):
            return x * x
        print(sum(pool.map(square, range(10))))
        print(pool.stats().workers)
    """
    out = _run_script(code, {"PROCWORKS_TEST_MARK": marker}).split()
    assert out == ["285", "2"] or out[0] == "285"
    # Every process of the script's tree (the cluster's child, its scheduler, nannies, workers) is
    # gone once the script exited.
    wait_until(lambda: not _processes_with_env(marker), timeout=30, what="the script's processes to exit")


def test_the_local_cluster_dies_with_a_host_killed_by_sigkill(dask_address: str | None) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    marker = uuid.uuid4().hex
    code = """
        import time, workers
        pool = workers.Pool(backend=workers.DaskBackend(n_workers=1))
        print(pool.submit(abs, -3).result(60), flush=True)
        time.sleep(600)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PROCWORKS_TEST_MARK": marker},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "3"
        assert len(_processes_with_env(marker)) >= 3  # the host, the cluster's child, a worker
    finally:
        proc.kill()
        proc.wait(30)
    wait_until(lambda: not _processes_with_env(marker), timeout=30, what="the cluster to die with its host")


def test_a_pool_on_dask_is_usable_from_many_threads(dask_backend: workers.DaskBackend) -> None:
    with workers.Pool(backend=dask_backend, on_event=None) as pool:
        results: list[int] = []
        lock = threading.Lock()

        def submit_some(base: int) -> None:
            got = [pool.submit(jobs.add, base, i).result(60) for i in range(10)]
            with lock:
                results.extend(got)

        threads = [threading.Thread(target=submit_some, args=(100 * t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(results) == sorted(100 * t + i for t in range(4) for i in range(10))


def test_a_pool_on_a_client_the_user_made(dask_address: str | None) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    from distributed import Client

    with Client(dask_address, set_as_default=False) as client:
        with workers.Pool(backend=workers.DaskBackend(client), on_event=None) as pool:
            assert pool.submit(jobs.add, 20, 22).result(60) == 42
        assert client.submit(abs, -5, pure=False).result(60) == 5  # the user's client still works


def test_a_pool_whose_scheduler_is_gone_breaks_and_fails_its_running_jobs(
    dask_address: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    from workers import _dask_workers

    monkeypatch.setattr(_dask_workers, "LOST_AFTER", 1.0)  # 30 s in earnest
    with dask_host.running(1) as host:
        pool = workers.Pool(backend=workers.DaskBackend(host.address), on_event=None)
        try:
            running = pool.submit(jobs.write_pid_then_sleep, str(tmp_path / "pid"), 120)
            worker_pid = _pid_in(tmp_path / "pid")
            queued = pool.submit(jobs.add, 1, 2)
            os.kill(host.pid, signal.SIGKILL)  # the scheduler and its nannies; the worker follows
            # Dask cancels what its client had in flight: that job's outcome is unknown (it ran).
            with pytest.raises(
                workers.DaskBackendError, match=r"did not return the job's outcome.*scheduler"
            ):
                running.result(60)
            with pytest.raises(workers.WorkersError, match=r"Dask|scheduler"):
                queued.result(60)
            wait_until(lambda: pool.broken, timeout=30, what="the pool to give the scheduler up")
            with pytest.raises(workers.PoolBroken):
                pool.submit(jobs.add, 1, 1)
        finally:
            pool.shutdown(timeout=30)
        wait_until(lambda: _gone(worker_pid), timeout=30, what="the orphaned Dask worker to exit")
