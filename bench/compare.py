"""Side-by-side comparison of procworks with its peers, in one run on one machine.

    .venv/bin/pip install apscheduler==3.11.3 pebble loky billiard supervisor
    .venv/bin/python bench/compare.py [--quick] [--json PATH]
    .venv/bin/python bench/compare.py --interleaved [--rounds-i N] [--seed S] [--quick] [--json PATH]

Rules, the same for everyone: the same job (bench/jobs_bench.py), 2 worker processes, each peer at its
documented defaults (on Linux and Python 3.11 the stdlib pools fork; ours uses forkserver; loky uses its
own loky context; APScheduler's process pool spawns), a warm-up that is not measured, one timer
(time.perf_counter; lateness of timed jobs uses time.time on both sides, as the job returns it).

Figures:
  1. the floor: a small pickled message ping-ponged over a multiprocessing Pipe between two processes;
  2. submit -> result round trip p50/p99 of add(1, 2), one job at a time, and of a lambda;
  3. trivial jobs per second, N submitted at once (time from the first submit to the last result);
  4. timed jobs against APScheduler 3: lateness (start in the worker - due time) of jobs due over a few
     seconds, without and with many future jobs pending, and the time to add those pending jobs;
  5. daemons against supervisord: SIGKILL of the program's pid -> its replacement runs; procman's
     restart latency (SIGKILL -> the replacement is READY) and 50 daemons started concurrently;
  6. CPU-bound jobs of ~50 ms: 2 workers against one process.

Absolute times on a shared machine are noise; the peer/ours ratios are what carries over.

--interleaved: sequential runs drift on a shared machine (the floor and the peers' ranking move between
two runs of one day), so this mode keeps every pool alive at once and samples them in turn, round after
round, each round in a fresh random order with the floor among them; each figure is reported as the
median over rounds of the per-round ratio to ours, with its spread. Then ours and APScheduler 3 run short
timed batches in alternation. The idle pools' threads share this interpreter (and its GIL) with the one
being measured: the same for every pool, but absolute figures are not those of the sequential mode.

Heavy imports (the peers) stay inside functions: under forkserver and spawn every child re-imports the
main script. procman's figures are taken in a fresh interpreter whose main is not this script (a
``python -c`` that imports this module), so that its forkserver preloads the daemon's module.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import importlib.metadata
import json
import multiprocessing
import os
import platform
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobs_bench import Noop, add, now

import procman
import workers

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2
WAIT = 30.0  # the bound on any single wait for a result
LAMBDA_PROBE = 2.0  # the bound on a peer's first lambda (a pool that swallows the pickling error hangs)
Row = dict[str, Any]

POOLS = [
    "procworks",
    "ProcessPoolExecutor",
    "multiprocessing.Pool",
    "multiprocess.Pool",
    "loky",
    "pebble",
    "billiard",
]
DISTS = ["multiprocess", "loky", "pebble", "billiard", "apscheduler", "supervisor"]


# -- small helpers ------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))]


def summary(samples: list[float]) -> Row:
    return {"n": len(samples), "p50": pct(samples, 0.5), "p99": pct(samples, 0.99), "max": max(samples)}


def bounded(fn: Callable[[], Any], timeout: float) -> bool:
    """Run fn in a thread for at most timeout seconds; False if it did not finish (or raised)."""
    done: list[bool] = []

    def run() -> None:
        with contextlib.suppress(Exception):
            fn()
            done.append(True)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return bool(done)


def busy(n: int) -> int:
    """Pure-Python CPU work (about 50 ms for the n that calibrate() finds)."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def children_of(pid: int) -> list[int]:
    """Live (not zombie) children of pid, from /proc."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        for c in _read(f"/proc/{pid}/task/{task}/children").split():
            stat = _read(f"/proc/{int(c)}/stat")
            if stat and stat[stat.rfind(b")") + 2 :][:1] != b"Z":
                out.append(int(c))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children_of(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# -- 1. the floor -------------------------------------------------------------------------------


def _echo(conn: Any) -> None:
    while conn.poll(60):
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


class Echo:
    """The floor's echo process and its pipe, kept open so that the floor can be sampled again and again."""

    MSG: tuple[str, tuple[int, int], dict[str, Any]] = ("add", (1, 2), {})

    def __init__(self) -> None:
        self.conn, self._far = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=_echo, args=(self._far,), daemon=True)
        self.proc.start()

    def ping(self, rounds: int) -> list[float]:
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            self.conn.send(self.MSG)
            if not self.conn.poll(WAIT):
                raise TimeoutError("the echo process did not answer")
            self.conn.recv()
            samples.append(time.perf_counter() - t)
        return samples

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        self._far.close()


def pipe_floor(rounds: int, warm: int) -> Row:
    echo = Echo()
    try:
        echo.ping(warm)
        return summary(echo.ping(rounds))
    finally:
        echo.close()


# -- 2, 3. pools --------------------------------------------------------------------------------


@dataclass
class Adapter:
    submit: Callable[..., Any]  # submit(fn, *args) -> a handle
    wait: Callable[[Any, float], Any]  # wait(handle, timeout) -> the result
    close: Callable[[], None]


def _future_wait(fut: Any, timeout: float) -> Any:
    return fut.result(timeout)


def _async_result_wait(res: Any, timeout: float) -> Any:
    return res.get(timeout)


def open_pool(name: str) -> Adapter:
    """The pool at its defaults with 2 workers (ImportError if the peer is not installed)."""
    if name == "procworks":
        pool = workers.Pool(WORKERS)
        return Adapter(
            pool.submit, _future_wait, lambda: pool.shutdown(wait=True, cancel_futures=True, timeout=30)
        )
    if name == "ProcessPoolExecutor":
        ex = concurrent.futures.ProcessPoolExecutor(WORKERS)
        return Adapter(ex.submit, _future_wait, lambda: ex.shutdown(wait=True, cancel_futures=True))
    if name == "loky":
        import loky  # type: ignore[import-untyped]

        lx = loky.get_reusable_executor(max_workers=WORKERS)
        return Adapter(lx.submit, _future_wait, lambda: lx.shutdown(wait=True, kill_workers=True))
    if name == "pebble":
        import pebble

        pp = pebble.ProcessPool(max_workers=WORKERS)

        def close_pebble() -> None:
            pp.stop()  # type: ignore[no-untyped-call]
            pp.join(20)

        return Adapter(lambda fn, *a: pp.schedule(fn, args=a), _future_wait, close_pebble)
    mp: Any
    if name == "multiprocessing.Pool":
        mp = multiprocessing.Pool(WORKERS)
    elif name == "multiprocess.Pool":
        import multiprocess

        mp = multiprocess.Pool(WORKERS)
    elif name == "billiard":
        import billiard  # type: ignore[import-untyped]

        mp = billiard.Pool(WORKERS)
    else:
        raise ValueError(name)

    def close_mp() -> None:  # what the pools' own context manager does
        mp.terminate()
        mp.join()

    return Adapter(lambda fn, *a: mp.apply_async(fn, a), _async_result_wait, close_mp)


def round_trips(ad: Adapter, fn: Callable[..., Any], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        value = ad.wait(ad.submit(fn, 1, 2), WAIT)
        samples.append(time.perf_counter() - t)
        if value != 3:
            raise AssertionError(f"wrong result {value!r}")
    return samples


def burst_rate(ad: Adapter, count: int) -> float:
    gc.collect()
    t = time.perf_counter()
    handles = [ad.submit(add, i, 1) for i in range(count)]
    deadline = t + 300
    for h in handles:
        ad.wait(h, max(0.001, deadline - time.perf_counter()))
    return count / (time.perf_counter() - t)


def bench_pool(name: str, rounds: int, burst: int, warm: int) -> Row:
    row: Row = {"name": name}
    try:
        ad = open_pool(name)
    except ImportError as exc:
        return {"name": name, "missing": str(exc)}
    try:
        # warm-up: every worker started and busy, the dispatch path and the results path exercised
        for h in [ad.submit(add, i, 1) for i in range(max(200, warm))]:
            ad.wait(h, 120)
        round_trips(ad, add, warm)
        gc.collect()
        row["rt"] = summary(round_trips(ad, add, rounds))
        burst_rate(ad, max(200, burst // 10))  # warm-up burst
        row["jobs_per_s"] = burst_rate(ad, burst)
        fn = lambda a, b: a + b  # noqa: E731 - the point is a lambda
        try:
            value = ad.wait(ad.submit(fn, 1, 2), LAMBDA_PROBE)
            if value != 3:
                raise AssertionError(f"wrong result {value!r}")
        except Exception as exc:  # noqa: BLE001 - a peer that refuses lambdas
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if "Timeout" in type(exc).__name__:  # billiard raises multiprocessing's own TimeoutError
                reason = f"no result within {LAMBDA_PROBE:g} s (the pickling error is swallowed)"
            row["lambda_refused"] = reason[:120]
        else:
            round_trips(ad, fn, warm)
            row["lambda_rt"] = summary(round_trips(ad, fn, max(100, rounds // 2)))
    finally:
        if not bounded(ad.close, 60):
            row["close_timed_out"] = True
    return row


# -- 4. timed jobs ------------------------------------------------------------------------------


def _late_row(late: list[float], count: int, add_s: float | None, pending: int) -> Row:
    row: Row = {"pending": pending, "expected": count, "completed": len(late), "add_pending_s": add_s}
    if late:
        row.update(summary(late))
        row["early"] = sum(1 for x in late if x < 0)
    return row


def timed_ours(count: int, spacing: float, pending: int, lead: float) -> Row:
    pool = workers.Pool(WORKERS)
    try:
        warm_start = time.time() + 0.2
        warm = [pool.submit_at(warm_start + i * 0.01, now) for i in range(40)]
        for f in warm:
            f.result(60)
        add_s = None
        if pending:
            base = time.time() + 3600
            t = time.perf_counter()
            far = [pool.submit_at(base + i * 1e-3, add, i, 1) for i in range(pending)]
            add_s = time.perf_counter() - t
            assert len(far) == pending
        gc.collect()
        start = time.time() + lead
        futs = [(start + i * spacing, pool.submit_at(start + i * spacing, now)) for i in range(count)]
        deadline = time.monotonic() + lead + count * spacing + 60
        late = [f.result(max(0.001, deadline - time.monotonic())) - due for due, f in futs]
        return _late_row(late, count, add_s, pending)
    finally:
        bounded(lambda: pool.shutdown(wait=True, cancel_futures=True, timeout=30), 60)


def timed_apscheduler(count: int, spacing: float, pending: int, lead: float) -> Row:
    try:
        from apscheduler.events import (  # type: ignore[import-untyped]
            EVENT_JOB_ERROR,
            EVENT_JOB_EXECUTED,
            EVENT_JOB_MISSED,
        )
        from apscheduler.executors.pool import ProcessPoolExecutor as APProcessPool  # type: ignore[import-untyped]
        from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
    except ImportError as exc:
        return {"missing": str(exc)}
    results: dict[str, float] = {}
    failed: dict[str, str] = {}

    def listener(event: Any) -> None:
        if event.code == EVENT_JOB_EXECUTED:
            results[event.job_id] = event.retval
        else:
            failed[event.job_id] = "missed" if event.code == EVENT_JOB_MISSED else "error"

    def wait_for(ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(j in results or j in failed for j in ids):
            time.sleep(0.02)

    def at(epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, tz=UTC)

    sched = BackgroundScheduler(executors={"default": APProcessPool(WORKERS)})
    sched.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    sched.start()
    try:
        # warm-up: its pool spawns workers on demand; jobs 10 ms apart start both, then steady state
        warm_start = time.time() + 0.3
        warm = [sched.add_job(now, "date", run_date=at(warm_start + i * 0.01)).id for i in range(40)]
        wait_for(warm, 60)
        add_s = None
        if pending:
            base = time.time() + 3600
            t = time.perf_counter()
            for i in range(pending):
                sched.add_job(add, "date", run_date=at(base + i * 1e-3), args=(i, 1))
            add_s = time.perf_counter() - t
        gc.collect()
        start = time.time() + lead
        dues = {}
        for i in range(count):
            due = start + i * spacing
            dues[sched.add_job(now, "date", run_date=at(due)).id] = due
        wait_for(list(dues), lead + count * spacing + 60)
        row = _late_row([results[j] - d for j, d in dues.items() if j in results], count, add_s, pending)
        row["missed_or_failed"] = sum(1 for j in dues if j in failed)
        return row
    finally:
        bounded(lambda: sched.shutdown(wait=True), 60)


# -- 5. daemons ---------------------------------------------------------------------------------


def restart_ours(method: str, rounds: int, warm: int = 2) -> Row:
    """procman: SIGKILL of the daemon's pid -> the replacement's READY event reaches the hook."""
    ready: queue.SimpleQueue[tuple[float, int | None]] = queue.SimpleQueue()

    def hook(event: procman.Event) -> None:
        if event.kind is procman.EventKind.READY:
            ready.put((time.perf_counter(), event.pid))

    policy = procman.RestartPolicy(restart="always", max_restarts=10**6, within=1.0, reset_after=0)
    samples = []
    with procman.Manager(start_method=method, on_event=hook) as manager:
        manager.register(Noop("svc"), restart=policy)
        manager.start(timeout=60)
        ready.get(timeout=30)
        for i in range(warm + rounds):
            pid = manager.status()["svc"].pid
            assert pid is not None
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                t1, new = ready.get(timeout=30)
                if new != pid:
                    break
            if i >= warm:
                samples.append(t1 - t)
    starts = []
    with procman.Manager(start_method=method, on_event=None) as manager:
        for i in range(50):
            manager.register(Noop(f"daemon-{i}"))
        for i in range(4):  # the first is the warm-up
            t = time.perf_counter()
            manager.start(timeout=120)
            if i:
                starts.append(time.perf_counter() - t)
            manager.stop(timeout=30)
    row = summary(samples)
    row["start50"] = summary(starts)
    return row


def restart_ours_isolated(method: str, rounds: int) -> Row:
    code = (
        f"import json, sys; sys.path.insert(0, {HERE!r}); import compare; "
        f"print(json.dumps(compare.restart_ours({method!r}, {rounds})))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 300 s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    row: Row = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


SUPERVISORD_CONF = """\
[unix_http_server]
file={tmp}/supervisor.sock

[supervisord]
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock

[program:prog]
command={python} -c "import time; print('up', flush=True); time.sleep(3600)"
autorestart=true
startsecs=0
stdout_logfile={tmp}/prog.out
"""
PROG_MARK = "time.sleep(3600)"


def restart_supervisord(rounds: int, warm: int = 1) -> Row:
    """supervisord: SIGKILL of the program's pid -> the replacement runs (exec'd), and prints 'up'."""
    bindir = os.path.dirname(sys.executable)
    exe = shutil.which("supervisord", path=bindir) or shutil.which("supervisord")
    ctl = shutil.which("supervisorctl", path=bindir) or shutil.which("supervisorctl")
    if exe is None or ctl is None:
        return {"missing": "supervisord/supervisorctl not found"}
    tmp = tempfile.mkdtemp(prefix="compare-supervisord-")
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(SUPERVISORD_CONF.format(tmp=tmp, python=sys.executable))
    out_log = os.path.join(tmp, "prog.out")
    seen: set[int] = set()
    proc = subprocess.Popen(
        [exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def ctl_pid() -> int | None:
        try:
            res = subprocess.run(
                [ctl, "-c", conf, "pid", "prog"], check=False, capture_output=True, text=True, timeout=10
            )
        except subprocess.TimeoutExpired:
            return None
        text = res.stdout.strip()
        return int(text) if text.isdigit() and int(text) > 0 else None

    def running_prog() -> int | None:
        for c in children_of(proc.pid):
            if PROG_MARK in cmdline(c):
                seen.add(c)
                return c
        return None

    def ups() -> int:
        return _read(out_log).count(b"up\n")

    rng = random.Random(1)
    try:
        deadline = time.monotonic() + 30
        while (pid := ctl_pid()) is None or ups() < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                return {"error": "supervisord did not start the program within 30 s"}
            time.sleep(0.05)
        seen.add(pid)
        runs, ups_t = [], []
        for i in range(warm + rounds):
            # its main loop wakes once a second: kill at a random phase of that second
            time.sleep(rng.uniform(0.0, 1.0))
            pid = ctl_pid()
            if pid is None or pid != running_prog():
                return {"error": f"round {i}: supervisorctl and /proc disagree on the program's pid"}
            before = ups()
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            t_run = t_up = None
            deadline = time.monotonic() + 10
            while (t_run is None or t_up is None) and time.monotonic() < deadline:
                if t_run is None and (new := running_prog()) is not None and new != pid:
                    t_run = time.perf_counter() - t
                if t_up is None and ups() > before:
                    t_up = time.perf_counter() - t
                time.sleep(0.0005)
            if t_run is None or t_up is None:
                return {"error": f"round {i}: no replacement within 10 s"}
            if i >= warm:
                runs.append(t_run)
                ups_t.append(t_up)
        row = summary(runs)
        row["up"] = summary(ups_t)
        return row
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
        for p in seen:
            if PROG_MARK in cmdline(p):
                kill_quietly(p)
        shutil.rmtree(tmp, ignore_errors=True)


# -- 6. CPU-bound scaling -----------------------------------------------------------------------


def calibrate(target: float) -> int:
    probe = 200_000
    best = min(_timed(busy, probe) for _ in range(3))
    return max(1000, int(probe * target / best))


def _timed(fn: Callable[[int], Any], n: int) -> float:
    t = time.perf_counter()
    fn(n)
    return time.perf_counter() - t


def cpu_scaling(jobs: int) -> Row:
    n = calibrate(0.05)
    busy(n)  # warm
    t = time.perf_counter()
    for _ in range(jobs):
        busy(n)
    serial = time.perf_counter() - t
    pool = workers.Pool(WORKERS)
    try:
        for f in [pool.submit(busy, n // 10) for _ in range(2 * WORKERS)]:
            f.result(60)
        t = time.perf_counter()
        futs = [pool.submit(busy, n) for _ in range(jobs)]
        for f in futs:
            f.result(120)
        parallel = time.perf_counter() - t
    finally:
        bounded(lambda: pool.shutdown(wait=True, cancel_futures=True, timeout=30), 60)
    return {
        "n": n,
        "jobs": jobs,
        "job_s": serial / jobs,
        "serial_s": serial,
        "pool_s": parallel,
        "speedup": serial / parallel,
        "workers": WORKERS,
    }


# -- interleaved: every pool alive at once, sampled in turn, round after round ---------------------

OURS = "procworks"
FLOOR = "pipe floor"
# Pools whose workers are forked: opened first, while this process has fewer threads to fork across.
FORKING = {"ProcessPoolExecutor", "multiprocessing.Pool", "multiprocess.Pool", "pebble", "billiard"}
TURN_WARM = 10  # unmeasured calls at the start of a pool's turn: it sat idle while the others ran


def spread(values: list[float]) -> Row:
    """Median, quartiles and range over the rounds (quartiles interpolated: rounds are few)."""
    if len(values) > 1:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "n": len(values),
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
    }


def _reason(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:200]


def warm_pool(ad: Adapter, warm: int, burst: int) -> None:
    """The warm-ups of bench_pool, all before the first round: workers started, both paths exercised."""
    for h in [ad.submit(add, i, 1) for i in range(max(200, warm))]:
        ad.wait(h, 120)
    round_trips(ad, add, warm)
    burst_rate(ad, max(200, burst // 10))


def pool_turn(ad: Adapter, calls: int, burst: int) -> tuple[float, float]:
    """One pool's turn in a round: (round-trip p50 of add(1, 2) over calls, jobs/s of a burst)."""
    round_trips(ad, add, TURN_WARM)
    rt = pct(round_trips(ad, add, calls), 0.5)
    return rt, burst_rate(ad, burst)


def interleaved_pools(rounds: int, calls: int, burst: int, warm: int, pings: int, seed: int) -> Row:
    """Every pool that opens, alive at once; per round each pool's turn and the floor in a shuffled order.

    A pool that fails (or hangs past WAIT) is closed and left out of the later rounds; the reason is kept.
    """
    rng = random.Random(seed)
    res: Row = {"seed": seed, "skipped": {}, "failed": {}, "close_timed_out": [], "rounds": []}
    echo = Echo()  # forked first, before any pool's threads exist
    pools: dict[str, Adapter] = {}
    close_bound = 60.0

    def drop(name: str, why: str) -> None:
        res["failed"][name] = why
        ad = pools.pop(name)
        if not bounded(ad.close, 60):
            res["close_timed_out"].append(name)

    try:
        echo.ping(warm)
        for name in sorted(POOLS, key=lambda n: n not in FORKING):
            note = ""
            with stage(f"open and warm up {name}"):
                try:
                    ad = open_pool(name)
                except ImportError as exc:
                    note = res["skipped"][name] = f"not installed: {_reason(exc)}"
                else:
                    pools[name] = ad  # before the warm-up: closed in the finally whatever happens next
                    try:
                        warm_pool(ad, warm, burst)
                    except Exception as exc:  # noqa: BLE001 - one pool's failure is reported, not the run's
                        note = f"warm-up failed: {_reason(exc)}"
                        drop(name, note)
            if note:
                print(f"  note: {name} is left out: {note}", file=sys.stderr)
        for r in range(rounds):
            order = [*pools, FLOOR]
            rng.shuffle(order)
            rec: Row = {"order": order, "rt_p50": {}, "jobs_per_s": {}}
            with stage(f"round {r + 1}/{rounds}"):
                for name in order:
                    if name == FLOOR:
                        rec["floor_p50"] = pct(echo.ping(pings), 0.5)
                        continue
                    try:
                        rec["rt_p50"][name], rec["jobs_per_s"][name] = pool_turn(pools[name], calls, burst)
                    except Exception as exc:  # noqa: BLE001 - as above
                        drop(name, f"round {r + 1}: {_reason(exc)}")
            res["rounds"].append(rec)
    except BaseException:
        # Leaving on an error or Ctrl-C (which a terminal also sends to the workers): a stdlib-style pool
        # whose worker died holding its queue's lock hangs in close. Bounded short; leftovers() kills.
        close_bound = 5.0
        raise
    finally:
        for name, ad in pools.items():
            with stage(f"close {name}"):
                if not bounded(ad.close, close_bound):
                    res["close_timed_out"].append(name)
        echo.close()
    res.update(summarize_rounds(res["rounds"]))
    return res


def summarize_rounds(rounds: list[Row]) -> Row:
    """Per-round ratios, ours over the peer, oriented so that > 1 means ours is faster, then their spread."""
    both = [r for r in rounds if OURS in r["rt_p50"]]
    out: Row = {"ours": {}, "peers": {}}
    if both:
        out["ours"] = {
            "rt_p50": spread([r["rt_p50"][OURS] for r in both]),
            "jobs_per_s": spread([r["jobs_per_s"][OURS] for r in both]),
            "rt_over_floor": spread([r["rt_p50"][OURS] / r["floor_p50"] for r in both]),
        }
    floors = [r["floor_p50"] for r in rounds if "floor_p50" in r]
    out["floor_p50"] = spread(floors) if floors else None
    for name in POOLS:
        paired = [r for r in both if name != OURS and name in r["rt_p50"]]
        if paired:
            out["peers"][name] = {
                "rounds": len(paired),
                "rt_p50": spread([r["rt_p50"][name] for r in paired]),
                "jobs_per_s": spread([r["jobs_per_s"][name] for r in paired]),
                "rt_ratio": spread([r["rt_p50"][name] / r["rt_p50"][OURS] for r in paired]),
                "jobs_per_s_ratio": spread([r["jobs_per_s"][OURS] / r["jobs_per_s"][name] for r in paired]),
            }
    return out


def timed_alternating(rounds: int, count: int, spacing: float, lead: float) -> Row:
    """Ours and APScheduler 3 in turns, one short batch each per round, who goes first alternating."""
    res: Row = {"rounds": []}
    for r in range(rounds):
        sides: list[tuple[str, Callable[[int, float, int, float], Row]]] = [
            ("ours", timed_ours),
            ("apscheduler", timed_apscheduler),
        ]
        if r % 2:
            sides.reverse()
        rec: Row = {"first": sides[0][0]}
        with stage(f"timed round {r + 1}/{rounds}, {sides[0][0]} first"):
            for key, fn in sides:
                try:
                    rec[key] = fn(count, spacing, 0, lead)
                except Exception as exc:  # noqa: BLE001 - a failed batch is reported with its round
                    rec[key] = {"error": _reason(exc)}
        res["rounds"].append(rec)
    for key in ("ours", "apscheduler"):
        rows = [rec[key] for rec in res["rounds"]]
        side: Row = {
            "completed": sum(row.get("completed", 0) for row in rows),
            "expected": count * len(rows),
            "early": sum(row.get("early", 0) for row in rows),
            "missed_or_failed": sum(row.get("missed_or_failed", 0) for row in rows),
            "errors": [row["error"] for row in rows if "error" in row],
        }
        if any("missing" in row for row in rows):
            side["missing"] = next(row["missing"] for row in rows if "missing" in row)
        for stat in ("p50", "p99"):
            values = [row[stat] for row in rows if stat in row]
            side[stat] = spread(values) if values else None
        res[key] = side
    for stat in ("p50", "p99"):  # APScheduler / ours, so that > 1 means ours is less late
        ratios = [
            rec["apscheduler"][stat] / rec["ours"][stat]
            for rec in res["rounds"]
            if stat in rec["apscheduler"] and rec["ours"].get(stat, 0) > 0
        ]
        res[f"{stat}_ratio"] = spread(ratios) if ratios else None
    return res


# -- the run ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in DISTS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def run_header(quick: bool, cfg: Row) -> Row:
    """What every result file starts with: when, where, with what."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": versions(),
        "quick": quick,
        "config": cfg,
        "workers": WORKERS,
    }


def leftovers() -> list[str]:
    """Our descendants still alive, killed; multiprocessing's forkservers and resource trackers
    (which exit on their own with this process) are listed apart by the caller."""
    out = []
    for pid in descendants(os.getpid()):
        cmd = cmdline(pid)
        if "forkserver" in cmd or "resource_tracker" in cmd:
            continue
        out.append(f"{pid} {cmd[:80]}")
        kill_quietly(pid)
    return out


@contextlib.contextmanager
def stage(title: str) -> Iterator[None]:
    t = time.perf_counter()
    print(f"  {title} ...", end="", flush=True, file=sys.stderr)
    try:
        yield
    finally:
        print(f" {time.perf_counter() - t:.1f} s", flush=True, file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (well under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this file")
    parser.add_argument(
        "--interleaved", action="store_true", help="every pool alive at once, sampled in turn (see above)"
    )
    parser.add_argument(
        "--rounds-i", type=int, metavar="N", help="rounds of the interleaved mode (15; 5 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=7, help="of the interleaved mode's shuffles (7)")
    args = parser.parse_args()
    if args.interleaved:
        return main_interleaved(args)
    if args.rounds_i is not None:
        parser.error("--rounds-i goes with --interleaved")
    q = args.quick
    cfg: Row = {
        "rounds": 200 if q else 2000,
        "warm": 100 if q else 300,
        "burst": 2000 if q else 20000,
        "timed_count": 200 if q else 400,
        "timed_spacing": 0.01,
        "timed_lead": 1.0,
        "pending": 10_000 if q else 100_000,
        "daemon_rounds": 10 if q else 30,
        "supervisord_rounds": 3 if q else 10,
        "cpu_jobs": 8 if q else 16,
    }
    started = time.perf_counter()
    out = run_header(q, cfg)
    try:
        with stage("pipe floor"):
            out["floor"] = pipe_floor(cfg["rounds"], cfg["warm"])
        out["pools"] = []
        for name in POOLS:
            with stage(name):
                out["pools"].append(bench_pool(name, cfg["rounds"], cfg["burst"], cfg["warm"]))
        n, sp, lead, pending = cfg["timed_count"], cfg["timed_spacing"], cfg["timed_lead"], cfg["pending"]
        out["timed"] = {}
        for key, fn, p in [
            ("ours", timed_ours, 0),
            ("apscheduler", timed_apscheduler, 0),
            ("ours_pending", timed_ours, pending),
            ("apscheduler_pending", timed_apscheduler, pending),
        ]:
            with stage(f"timed jobs: {key}"):
                out["timed"][key] = fn(n, sp, p, lead)
        out["daemons"] = {}
        for method in ("forkserver", "fork"):
            with stage(f"procman {method}"):
                out["daemons"][method] = restart_ours_isolated(method, cfg["daemon_rounds"])
        with stage("supervisord"):
            out["daemons"]["supervisord"] = restart_supervisord(cfg["supervisord_rounds"])
        with stage("CPU-bound scaling"):
            out["cpu"] = cpu_scaling(cfg["cpu_jobs"])
    finally:
        out["leftover_processes"] = leftovers()
    out["seconds"] = time.perf_counter() - started
    print_table(out)
    if args.json:
        write_json(args.json, out)
    return 0


def write_json(path: str, out: Row) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nJSON written to {path}")


def main_interleaved(args: argparse.Namespace) -> int:
    q = args.quick
    rounds = args.rounds_i if args.rounds_i is not None else (5 if q else 15)
    if rounds < 1:
        raise SystemExit("--rounds-i must be at least 1")
    cfg: Row = {
        "rounds": rounds,
        "seed": args.seed,
        "calls": 50 if q else 200,
        "burst": 500 if q else 2000,
        "warm": 100 if q else 300,
        "floor_pings": 50 if q else 200,
        "timed_count": 20,
        "timed_spacing": 0.01,
        "timed_lead": 0.5,
    }
    started = time.perf_counter()
    out = {"mode": "interleaved", **run_header(q, cfg)}
    try:
        out["interleaved"] = interleaved_pools(
            rounds, cfg["calls"], cfg["burst"], cfg["warm"], cfg["floor_pings"], cfg["seed"]
        )
        out["timed"] = timed_alternating(rounds, cfg["timed_count"], cfg["timed_spacing"], cfg["timed_lead"])
    except BaseException:
        if killed := leftovers():
            print(f"! leftover processes killed: {killed}", file=sys.stderr)
        raise
    out["leftover_processes"] = leftovers()
    out["seconds"] = time.perf_counter() - started
    print_interleaved(out)
    if args.json:
        write_json(args.json, out)
    return 0


# -- the table ----------------------------------------------------------------------------------


def fmt_t(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) < 1e-3:
        return f"{x * 1e6:,.0f} us"
    if abs(x) < 1:
        return f"{x * 1e3:,.2f} ms"
    return f"{x:,.2f} s"


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}/s"


def _get(row: Row | None, *path: str) -> Any:
    cur: Any = row
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


class Table:
    COLS = (40, 11, 22, 11, 10)

    def __init__(self) -> None:
        w = self.COLS
        head = ["figure", "ours", "peer", "peer", "peer/ours"]
        print(f"{head[0]:<{w[0]}}{head[1]:>{w[1]}}  {head[2]:<{w[2]}}{head[3]:>{w[3]}}{head[4]:>{w[4]}}")
        print("-" * (sum(w) + 2))

    def row(
        self,
        figure: str,
        ours: float | None,
        peers: list[tuple[str, Any]],
        fmt: Callable[[float | None], str],
        note: str = "",
    ) -> None:
        w = self.COLS
        first = True
        for peer, value in peers or [("", None)]:
            left = f"{figure if first else '':<{w[0]}}{(fmt(ours) if first else ''):>{w[1]}}"
            if not peer:
                print(left)
                break
            if isinstance(value, str):  # 'missing' or a reason for n/a
                shown, ratio = value, ""
            elif value is None:
                shown, ratio = "n/a", ""
            else:
                shown = fmt(value)
                ratio = f"{value / ours:.2f}x" if ours else ""
            print(f"{left}  {peer:<{w[2]}}{shown:>{w[3]}}{ratio:>{w[4]}}")
            first = False
        if note:
            print(f"{'':<{w[0]}}{'':>{w[1]}}  ({note})")


def print_table(out: Row) -> None:
    print(
        f"\nprocworks vs peers, {out['date']}, {out['machine']}, Python {out['versions']['python']}, "
        f"{out['workers']} workers each{' (--quick)' if out['quick'] else ''}"
    )
    print("peer/ours > 1: ours is better for times; < 1: ours is better for jobs/s\n")
    t = Table()
    cfg = out["config"]
    pools: list[Row] = out.get("pools", [])
    ours = next((p for p in pools if p["name"] == "procworks"), None)
    peers = [p for p in pools if p["name"] != "procworks"]
    floor = out.get("floor")
    if floor:
        t.row("pipe ping-pong floor p50 (not a pool)", None, [("Pipe, 2 processes", floor["p50"])], fmt_t)
        t.row("pipe ping-pong floor p99", None, [("Pipe, 2 processes", floor["p99"])], fmt_t)

    def pool_values(*path: str, refused_key: str = "") -> list[tuple[str, Any]]:
        vals: list[tuple[str, Any]] = []
        for p in peers:
            if "missing" in p:
                vals.append((p["name"], "missing"))
            elif refused_key and refused_key in p:
                vals.append((p["name"], "n/a"))
            else:
                vals.append((p["name"], _get(p, *path)))
        return vals

    if ours is not None:
        t.row("round trip p50, add(1, 2)", _get(ours, "rt", "p50"), pool_values("rt", "p50"), fmt_t)
        t.row("round trip p99, add(1, 2)", _get(ours, "rt", "p99"), pool_values("rt", "p99"), fmt_t)
        t.row(
            "round trip p50, a lambda",
            _get(ours, "lambda_rt", "p50"),
            pool_values("lambda_rt", "p50", refused_key="lambda_refused"),
            fmt_t,
            note="n/a: the pool refuses lambdas (see the JSON for the error)",
        )
        t.row(
            f"jobs/s, {cfg['burst']:,} submitted at once",
            _get(ours, "jobs_per_s"),
            pool_values("jobs_per_s"),
            fmt_rate,
        )
    timed = out.get("timed", {})
    span = cfg["timed_count"] * cfg["timed_spacing"]
    for suffix, label in (("", ""), ("_pending", f", {cfg['pending']:,} pending")):
        o, a = timed.get("ours" + suffix), timed.get("apscheduler" + suffix)
        a_name = "APScheduler 3"
        for stat in ("p50", "p99", "max"):
            a_val: Any = "missing" if a is not None and "missing" in a else _get(a, stat)
            t.row(
                f"lateness {stat}, {cfg['timed_count']} over {span:g} s{label}",
                _get(o, stat),
                [(a_name, a_val)],
                fmt_t,
            )
        if suffix:
            a_val = "missing" if a is not None and "missing" in a else _get(a, "add_pending_s")
            t.row(
                f"adding {cfg['pending']:,} future jobs", _get(o, "add_pending_s"), [(a_name, a_val)], fmt_t
            )
        notes = []
        for who, r in (("ours", o), ("APScheduler", a)):
            if r and "missing" not in r:
                notes.append(
                    f"{who}: {r['completed']}/{r['expected']} ran, {r.get('early', 0)} early"
                    + (f", {r['missed_or_failed']} missed/failed" if "missed_or_failed" in r else "")
                )
        if notes:
            print(f"{'':<{Table.COLS[0] + Table.COLS[1]}}  ({'; '.join(notes)})")
    daemons = out.get("daemons", {})
    sv = daemons.get("supervisord", {})
    sv_val: Any = "missing" if "missing" in sv else ("error" if "error" in sv else None)
    for method in ("forkserver", "fork"):
        d = daemons.get(method, {})
        for stat in ("p50", "p99"):
            t.row(
                f"restart after SIGKILL {stat}, {method}",
                _get(d, stat),
                [
                    ("supervisord (runs)", sv_val or _get(sv, stat)),
                    ("supervisord (says up)", sv_val or _get(sv, "up", stat)),
                ],
                fmt_t,
            )
    for method in ("forkserver", "fork"):
        t.row(
            f"50 daemons ready at once p50, {method}", _get(daemons.get(method), "start50", "p50"), [], fmt_t
        )
    cpu = out.get("cpu")
    if cpu:
        print(
            f"\nCPU-bound: {cpu['jobs']} jobs of {cpu['job_s'] * 1e3:.0f} ms: "
            f"one process {cpu['serial_s']:.2f} s, "
            f"procworks with {cpu['workers']} workers {cpu['pool_s']:.2f} s: {cpu['speedup']:.2f}x speed-up"
        )
    for name, row in [*((p["name"], p) for p in pools), *daemons.items(), *timed.items()]:
        for key in ("error", "close_timed_out"):
            if key in row:
                print(f"! {name}: {key}: {row[key]}")
    if out.get("leftover_processes"):
        print(f"! leftover processes killed: {out['leftover_processes']}")
    versions = ", ".join(f"{k} {v}" for k, v in out["versions"].items() if k != "python")
    print(f"\npeers: {versions}")
    print(f"run took {out['seconds']:.0f} s")


def fmt_spread(sp: Row | None, fmt: Callable[[float], str]) -> str:
    """median [q1-q3] of a spread()."""
    if sp is None:
        return "n/a"
    return f"{fmt(sp['median'])} [{fmt(sp['q1'])}-{fmt(sp['q3'])}]"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def fmt_minmax(sp: Row | None) -> str:
    return "" if sp is None else f"({_x(sp['min'])}-{_x(sp['max'])})"


def cells(widths: tuple[int, ...], values: list[str], note: str = "") -> None:
    """One table line: the first cell left-aligned, the others right-aligned, a space between them."""
    line = " ".join(
        f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (w, v) in enumerate(zip(widths, values, strict=True))
    )
    print(f"{line}  {note}" if note else line)


def print_interleaved(out: Row) -> None:
    cfg, res, timed = out["config"], out.get("interleaved", {}), out.get("timed", {})
    print(
        f"\nprocworks vs peers, interleaved, {out['date']}, {out['machine']}, Python "
        f"{out['versions']['python']}, {out['workers']} workers each{' (--quick)' if out['quick'] else ''}"
    )
    print(
        f"{cfg['rounds']} rounds, shuffle seed {cfg['seed']}: in each round every pool's turn and the pipe "
        f"floor in a fresh random order;\na turn: round-trip p50 of {cfg['calls']} sequential add(1, 2), "
        f"then jobs/s of {cfg['burst']:,} jobs submitted at once."
    )
    print("Ratios per round, then median [interquartile range] (min-max) over rounds; > 1: ours is faster\n")
    ours, floor = res.get("ours"), res.get("floor_p50")
    if ours:
        print(
            f"ours, median [IQR]: round trip p50 {fmt_spread(ours['rt_p50'], fmt_t)} "
            f"({fmt_spread(ours['rt_over_floor'], _x)} the floor),\n"
            f"                    jobs/s {fmt_spread(ours['jobs_per_s'], fmt_rate)}"
        )
    if floor:
        print(
            f"pipe ping-pong floor p50: {fmt_spread(floor, fmt_t)} "
            f"(min-max {fmt_t(floor['min'])}-{fmt_t(floor['max'])})"
        )
    w = (20, 8, 20, 15, 10, 20, 15)
    print()
    cells(w, ["peer", "rt p50", "peer/ours rt", "(min-max)", "jobs/s", "ours/peer jobs/s", "(min-max)"])
    print("-" * (sum(w) + len(w) - 1))
    peers: Row = res.get("peers", {})
    for name in POOLS:
        if name == OURS:
            continue
        p = peers.get(name)
        if p is None:
            why = res.get("skipped", {}).get(name) or res.get("failed", {}).get(name) or "no rounds"
            print(f"{name:<{w[0]}} not measured: {why}"[:110])
            continue
        rt, rate = p["rt_ratio"], p["jobs_per_s_ratio"]
        cells(
            w,
            [
                name,
                fmt_t(p["rt_p50"]["median"]),
                fmt_spread(rt, _x),
                fmt_minmax(rt),
                fmt_rate(p["jobs_per_s"]["median"]),
                fmt_spread(rate, _x),
                fmt_minmax(rate),
            ],
            f"({p['rounds']} rounds)" if p["rounds"] != cfg["rounds"] else "",
        )
    if not ours:
        print("! procworks has no round: no ratio (see below)")
    if timed:
        span = f"{cfg['timed_count']} jobs {cfg['timed_spacing'] * 1e3:g} ms apart"
        print(f"\ntimed lateness, ours and APScheduler 3 in alternation, one batch each of {span} per round")
        print(
            "(median [IQR] over rounds of each batch's figure; APScheduler/ours per round: > 1, ours better)"
        )
        tw = (12, 24, 26, 20, 15)
        cells(tw, ["", "ours", "APScheduler 3", "APScheduler/ours", "(min-max)"])
        print("-" * (sum(tw) + len(tw) - 1))
        a = timed["apscheduler"]
        for stat in ("p50", "p99"):
            r = timed.get(f"{stat}_ratio")
            a_val = "missing" if "missing" in a else fmt_spread(a[stat], fmt_t)
            ours_val = fmt_spread(timed["ours"][stat], fmt_t)
            cells(tw, [f"lateness {stat}", ours_val, a_val, fmt_spread(r, _x), fmt_minmax(r)])
        notes = []
        for who, side in (("ours", timed["ours"]), ("APScheduler", a)):
            if "missing" not in side:
                notes.append(
                    f"{who}: {side['completed']}/{side['expected']} ran, {side['early']} early"
                    + (f", {side['missed_or_failed']} missed/failed" if side["missed_or_failed"] else "")
                )
            for err in side["errors"]:
                notes.append(f"{who}: {err}")
        print(f"({'; '.join(notes)})")
    for name, why in res.get("failed", {}).items():
        print(f"! {name}: {why}")
    for name in res.get("close_timed_out", []):
        print(f"! {name}: close timed out")
    if out.get("leftover_processes"):
        print(f"! leftover processes killed: {out['leftover_processes']}")
    versions = ", ".join(f"{k} {v}" for k, v in out["versions"].items() if k != "python")
    print(f"\npeers: {versions}")
    print(f"run took {out['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
