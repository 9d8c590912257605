"""Side-by-side comparison of procworks with its peers, in one run on one machine.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/compare.py [--quick] [--json bench/results/compare.json]

Every contender gets the same job, 2 worker processes, its documented defaults (the peers' default
start method is fork on Linux; ours is forkserver), a warm-up that is not measured, and the same
timer (time.perf_counter). Absolute times on a shared 2-core machine are
noise; the ratios printed beside each peer are what carries over.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jobs_bench import Noop, add, now

import procman
import workers

WORKERS = 2
Row = dict[str, Any]


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def busy(n: int) -> int:
    """About 50 ms of pure-Python work for n = 1_000_000 on this machine."""
    total = 0
    for i in range(n):
        total += i * i
    return total


# -- the floor ----------------------------------------------------------------------------------


def _echo(conn: Any) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def pipe_floor(rounds: int) -> list[float]:
    ctx = multiprocessing.get_context("forkserver")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(b,))
    proc.start()
    try:
        msg = (1, "add", (1, 2))
        for _ in range(200):
            a.send(msg)
            a.recv()
        out = []
        for _ in range(rounds):
            t = time.perf_counter()
            a.send(msg)
            a.recv()
            out.append(time.perf_counter() - t)
        return out
    finally:
        a.send(None)
        proc.join(5)
        if proc.is_alive():
            proc.kill()


# -- pools --------------------------------------------------------------------------------------


@contextlib.contextmanager
def make_pool(name: str) -> Iterator[Callable[..., Callable[[], Any]]]:
    """Yields submit(fn, *args) -> a no-argument callable that waits for the result (60 s bound)."""
    if name == "procworks":
        pool = workers.Pool(WORKERS, on_event=None)
        try:
            yield lambda fn, *a: functools.partial(pool.submit(fn, *a).result, 60)
        finally:
            pool.shutdown(wait=True, cancel_futures=True, timeout=30)
    elif name == "ProcessPoolExecutor":
        ex = concurrent.futures.ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context("forkserver")
        )
        try:
            yield lambda fn, *a: functools.partial(ex.submit(fn, *a).result, 60)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    elif name == "loky":
        import loky  # type: ignore[import-untyped]

        lex = loky.get_reusable_executor(max_workers=WORKERS)
        try:
            yield lambda fn, *a: functools.partial(lex.submit(fn, *a).result, 60)
        finally:
            lex.shutdown(wait=True)
    elif name == "pebble":
        import pebble  # type: ignore[import-untyped]

        pp = pebble.ProcessPool(max_workers=WORKERS)
        try:
            yield lambda fn, *a: functools.partial(pp.schedule(fn, args=a).result, 60)
        finally:
            pp.stop()
            pp.join(10)
    else:
        if name == "multiprocessing.Pool":
            mp: Any = multiprocessing.Pool(WORKERS)
        elif name == "multiprocess.Pool":
            import multiprocess

            mp = multiprocess.Pool(WORKERS)
        else:
            import billiard  # type: ignore[import-untyped]

            mp = billiard.Pool(WORKERS)
        try:
            yield lambda fn, *a: functools.partial(mp.apply_async(fn, a).get, 60)
        finally:
            mp.terminate()
            mp.join()


POOLS = [
    "procworks",
    "ProcessPoolExecutor",
    "multiprocessing.Pool",
    "multiprocess.Pool",
    "loky",
    "pebble",
    "billiard",
]


def bench_pool(name: str, rounds: int, burst: int) -> Row:
    row: Row = {"name": name}
    try:
        with make_pool(name) as submit:
            for _ in range(300):
                submit(add, 1, 2)()
            rt = []
            for _ in range(rounds):
                t = time.perf_counter()
                _wait(submit(add, 1, 2))
                rt.append(time.perf_counter() - t)
            row["rt_p50"], row["rt_p99"] = pct(rt, 0.5), pct(rt, 0.99)
            t = time.perf_counter()
            waits = [submit(add, i, 1) for i in range(burst)]
            for w in waits:
                _wait(w)
            row["jobs_per_s"] = burst / (time.perf_counter() - t)
            try:
                fn = lambda a, b: a + b  # noqa: E731 - the point is a lambda
                _wait(submit(fn, 1, 2))
                lam = []
                for _ in range(max(50, rounds // 4)):
                    t = time.perf_counter()
                    _wait(submit(fn, 1, 2))
                    lam.append(time.perf_counter() - t)
                row["lambda_p50"] = pct(lam, 0.5)
            except Exception as exc:  # noqa: BLE001 - a peer that refuses lambdas
                row["lambda_p50"] = None
                row["lambda_error"] = type(exc).__name__
    except ImportError:
        row["missing"] = True
    return row


def _wait(result: Callable[[], Any]) -> Any:
    return result()


def cpu_scaling(jobs: int) -> Row:
    n = 1_000_000
    t = time.perf_counter()
    for _ in range(jobs):
        busy(n)
    serial = time.perf_counter() - t
    with workers.Pool(WORKERS, on_event=None) as pool:
        pool.submit(add, 1, 1).result(60)
        t = time.perf_counter()
        list(pool.map(busy, [n] * jobs))
        parallel = time.perf_counter() - t
    return {"serial_s": serial, "pool_s": parallel, "speedup": serial / parallel, "workers": WORKERS}


# -- timed jobs ---------------------------------------------------------------------------------


def lateness_ours(count: int, spacing: float, pending: int) -> Row:
    with workers.Pool(WORKERS, on_event=None) as pool:
        pool.submit(add, 1, 1).result(60)
        far: list[Any] = []
        base = time.time() + 3600
        t = time.perf_counter()
        far.extend(pool.submit_at(base + i * 1e-3, add, i, 1) for i in range(pending))
        schedule_s = time.perf_counter() - t
        start = time.time() + 0.5
        futs = [(start + i * spacing, pool.submit_at(start + i * spacing, now)) for i in range(count)]
        late = [f.result(60) - due for due, f in futs]
        for f in far:
            f.cancel()
    return _late_row(late, schedule_s)


def lateness_apscheduler(count: int, spacing: float, pending: int) -> Row:
    try:
        from apscheduler.executors.pool import ProcessPoolExecutor as APPool  # type: ignore[import-untyped]
        from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
    except ImportError:
        return {"missing": True}
    from datetime import datetime, timedelta

    sched = BackgroundScheduler(executors={"default": APPool(WORKERS)})
    sched.start()
    try:
        results: dict[str, float] = {}

        def listener(event: Any) -> None:
            if getattr(event, "retval", None) is not None:
                results[event.job_id] = event.retval

        from apscheduler.events import EVENT_JOB_EXECUTED  # type: ignore[import-untyped]

        sched.add_listener(listener, EVENT_JOB_EXECUTED)
        warm = sched.add_job(now, "date", run_date=datetime.now() + timedelta(milliseconds=50))
        deadline = time.monotonic() + 30
        while warm.id not in results and time.monotonic() < deadline:
            time.sleep(0.01)
        base = datetime.now() + timedelta(hours=1)
        t = time.perf_counter()
        for i in range(pending):
            sched.add_job(add, "date", run_date=base + timedelta(milliseconds=i), args=(i, 1))
        schedule_s = time.perf_counter() - t
        start = time.time() + 1.0
        dues = {}
        for i in range(count):
            due = start + i * spacing
            job = sched.add_job(now, "date", run_date=datetime.fromtimestamp(due))
            dues[job.id] = due
        deadline = time.monotonic() + 60 + count * spacing
        while len([j for j in dues if j in results]) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        late = [results[j] - d for j, d in dues.items() if j in results]
        row = _late_row(late, schedule_s)
        row["completed"] = len(late)
        return row
    finally:
        sched.shutdown(wait=False)


def _late_row(late: list[float], schedule_s: float) -> Row:
    if not late:
        return {"schedule_s": schedule_s, "completed": 0}
    return {
        "late_p50": pct(late, 0.5),
        "late_p99": pct(late, 0.99),
        "late_max": max(late),
        "early": sum(1 for x in late if x < 0),
        "schedule_s": schedule_s,
    }


# -- daemons ------------------------------------------------------------------------------------


def restart_ours(method: str, rounds: int) -> Row:
    import queue

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
        for _ in range(rounds):
            pid = manager.status()["svc"].pid
            assert pid is not None
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                t1, new = ready.get(timeout=30)
                if new != pid:
                    break
            samples.append(t1 - t)
    with procman.Manager(start_method=method, on_event=None) as manager:
        for i in range(50):
            manager.register(Noop(f"d-{i}"))
        manager.start(timeout=120)
        manager.stop(timeout=30)
        starts = []
        for _ in range(3):
            t = time.perf_counter()
            manager.start(timeout=120)
            starts.append(time.perf_counter() - t)
            manager.stop(timeout=30)
    return {
        "restart_p50": pct(samples, 0.5),
        "restart_p99": pct(samples, 0.99),
        "start50": statistics.median(starts),
    }


def restart_ours_isolated(method: str, rounds: int) -> Row:
    """restart_ours() in a fresh interpreter whose main is not this script.

    Under forkserver and spawn every child re-imports the host's main script (multiprocessing's
    rule); this script imports every peer and would be timed into each restart. An application
    keeps heavy imports under its main guard, as the README says; so does this measurement.
    """
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import compare; print(json.dumps(compare.restart_ours({method!r}, {rounds})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    )
    row: Row = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def restart_supervisord(rounds: int) -> Row:
    exe = shutil.which("supervisord", path=os.path.dirname(sys.executable))
    ctl = shutil.which("supervisorctl", path=os.path.dirname(sys.executable))
    if exe is None or ctl is None:
        return {"missing": True}
    tmp = tempfile.mkdtemp(prefix="sv-")
    conf = os.path.join(tmp, "supervisord.conf")
    sock = os.path.join(tmp, "sv.sock")
    with open(conf, "w") as f:
        f.write(
            f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={tmp}/sv.log\npidfile={tmp}/sv.pid\n"
            f"nodaemon=true\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[supervisorctl]\nserverurl=unix://{sock}\n"
            f'[program:prog]\ncommand={sys.executable} -c "import time; time.sleep(3600)"\n'
            "autorestart=true\nstartsecs=0\nstartretries=1000\n"
        )
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def prog_pid() -> int | None:
            out = subprocess.run(
                [ctl, "-c", conf, "pid", "prog"], check=False, capture_output=True, text=True, timeout=10
            )
            text = out.stdout.strip()
            return int(text) if text.isdigit() and int(text) > 0 else None

        deadline = time.monotonic() + 30
        while prog_pid() is None:
            if time.monotonic() > deadline:
                return {"error": "supervisord did not start the program"}
            time.sleep(0.05)
        samples = []
        for _ in range(rounds):
            pid = prog_pid()
            assert pid is not None
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:  # the replacement runs: a new child of supervisord
                new = _child_of(proc.pid)
                if new is not None and new != pid:
                    break
                if time.monotonic() > deadline:
                    return {"error": "no replacement within 30 s"}
                time.sleep(0.001)
            samples.append(time.perf_counter() - t)
        return {"restart_p50": pct(samples, 0.5), "restart_p99": pct(samples, 0.99)}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _child_of(ppid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[1]) == ppid and fields[0] != b"Z":
                return int(entry)
    return None


# -- report -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 1 minute)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    rounds, burst = (300, 2000) if args.quick else (2000, 20000)
    pending = 10_000 if args.quick else 100_000
    started = time.perf_counter()
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "quick": args.quick,
    }
    out["floor_p50"] = pct(pipe_floor(rounds), 0.5)
    out["pools"] = [bench_pool(name, rounds, burst) for name in POOLS]
    out["timed"] = {
        "procworks": lateness_ours(400, 0.01, 0),
        "procworks_pending": lateness_ours(400, 0.01, pending),
        "apscheduler": lateness_apscheduler(400, 0.01, 0),
        "apscheduler_pending": lateness_apscheduler(400, 0.01, pending),
    }
    out["daemons"] = {m: restart_ours_isolated(m, 20) for m in ("forkserver", "fork")}
    out["daemons"]["supervisord"] = restart_supervisord(10)
    out["cpu"] = cpu_scaling(8)
    out["seconds"] = time.perf_counter() - started
    print_table(out)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _us(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e6:,.0f} us"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:,.2f} ms"


def print_table(out: dict[str, Any]) -> None:
    print(f"procworks comparison, {out['date']}, {out['machine']}{' (quick)' if out['quick'] else ''}")
    print(f"pipe ping-pong floor p50: {_us(out['floor_p50'])}\n")
    ours = out["pools"][0]
    print(
        f"{'pool (2 workers)':<22}{'rt p50':>10}{'rt p99':>10}{'jobs/s':>10}{'lambda p50':>12}  ratio rt/jobs"
    )
    for row in out["pools"]:
        if row.get("missing"):
            print(f"{row['name']:<22} missing")
            continue
        ratio = f"{row['rt_p50'] / ours['rt_p50']:.2f}x / {ours['jobs_per_s'] / row['jobs_per_s']:.2f}x"
        print(
            f"{row['name']:<22}{_us(row['rt_p50']):>10}{_us(row['rt_p99']):>10}{row['jobs_per_s']:>10,.0f}"
            f"{_us(row.get('lambda_p50')):>12}  {ratio}"
        )
    print(f"\n{'timed jobs (400 over 4 s)':<28}{'p50':>10}{'p99':>10}{'max':>10}{'early':>7}{'schedule':>11}")
    for name, row in out["timed"].items():
        if "late_p50" not in row:
            print(f"{name:<28} {row}")
            continue
        print(
            f"{name:<28}{_ms(row['late_p50']):>10}{_ms(row['late_p99']):>10}{_ms(row['late_max']):>10}"
            f"{row['early']:>7}{row['schedule_s']:>10.2f}s"
        )
    print(f"\n{'daemons':<14}{'restart p50':>13}{'restart p99':>13}{'50 ready':>11}")
    for name, row in out["daemons"].items():
        if "restart_p50" not in row:
            print(f"{name:<14} {row}")
            continue
        print(
            f"{name:<14}{_ms(row['restart_p50']):>13}{_ms(row['restart_p99']):>13}{_ms(row.get('start50')):>11}"
        )
    cpu = out["cpu"]
    print(f"\nCPU-bound, 8 jobs of ~50 ms: {cpu['speedup']:.2f}x speed-up with {cpu['workers']} workers")
    print(f"(run took {out['seconds']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
