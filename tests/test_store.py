"""Durable timed jobs and schedules: a real SQLite file and a real PostgreSQL server, real host
processes killed with SIGKILL. Every test runs on both stores (PostgreSQL's skip, saying why,
only where no server can be started)."""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers
from procman._child import pickling as _pickling
from workers._store import MIGRATIONS, POSTGRES, SQLITE

HERE = Path(__file__).parent
tagged = _pickling.dumps  # the store's pickles carry the pool's tag (stdlib pickle or by value)
STORES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the store as an operator would, outside any pool."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url[len("sqlite:///") :], timeout=30)
        try:
            with con:  # commits
                return [tuple(r) for r in con.execute(sql, params).fetchall()]
        finally:
            con.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(sql.replace("?", "%s"), params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def append_line(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


def fire_time_line(path: str) -> None:
    t = workers.scheduled_time()
    append_line(path, repr(round(t.timestamp(), 3)) if t is not None else "none")


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def fast(url: str, **kw: Any) -> workers.Store:
    return workers.Store(url, poll=0.05, lease=3.0, **kw)


# -- one host -----------------------------------------------------------------------------------


def test_a_timed_job_outlives_its_pool(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        fut = pool.submit_job(append_line, (str(out), "ran"), after=1.5, name="later")
        [job] = pool.timed_jobs()
        assert (job.name, job.state) == ("later", "due")
    assert fut.cancelled()  # this process's future; the job stays in the store
    assert not out.exists()
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        wait_until(out.exists, 15, "the job to run after the restart")
        assert pool.timed_jobs() == []
    assert lines(out) == ["ran"]
    assert query(store_url, "SELECT name, state FROM procworks_jobs") == [("later", "done")]


def test_cancel_futures_leaves_queued_stored_jobs_in_the_store(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        busy = pool.submit(time.sleep, 1.0)  # the one worker is busy: the timed job waits in the queue
        fut = pool.submit_after(0.05, append_line, str(out), "kept")
        time.sleep(0.4)
        pool.shutdown(cancel_futures=True)
    assert busy.done() and fut.cancelled()
    with workers.Pool(1, store=fast(store_url), on_event=None):
        wait_until(lambda: lines(out) == ["kept"], 15, "the job to run after the restart")


def test_a_run_whose_host_left_no_lease_is_released(store_url: str) -> None:
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        pool.schedule(os.getpid, every="1h", name="s")
    insert = "INSERT INTO procworks_runs (schedule, fire_time, state, host) VALUES ('s', ?, ?, 'nohost')"
    query(store_url, insert, (time.time() - 5, "running"))
    states = "SELECT state FROM procworks_runs"
    with workers.Pool(1, store=fast(store_url), on_event=None):
        wait_until(
            lambda: query(store_url, states) == [("interrupted",)], 15, "the orphan run to be released"
        )


def test_a_timed_job_due_soon_returns_its_result(store_url: str) -> None:
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        assert pool.submit_after(0.05, pow, 2, 10).result(15) == 1024
        fut = pool.submit_after(0.05, int, "not a number")
        with pytest.raises(ValueError, match="not a number"):
            fut.result(15)
    states = sorted(r[0] for r in query(store_url, "SELECT state FROM procworks_jobs"))
    assert states == ["done", "failed"]


def test_a_cancelled_future_cancels_its_stored_job(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        fut = pool.submit_job(append_line, (str(out), "no"), after=0.3, name="cancelled")
        assert fut.cancel()
        gone = "SELECT state FROM procworks_jobs"
        wait_until(lambda: query(store_url, gone) == [("cancelled",)], 15, "the job to be recorded cancelled")
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        time.sleep(0.3)
        assert pool.timed_jobs() == []
    assert not out.exists()


def test_a_stored_schedule_reports_its_runs_as_events(store_url: str) -> None:
    seen: list[workers.PoolEvent] = []
    with workers.Pool(1, store=fast(store_url), on_event=seen.append) as pool:
        s = pool.schedule(int, every="1h", args=("x",), name="bad")
        s.run_now()
        assert s.wait(1, 15)
        s.cancel()
        assert isinstance(s.last_error, ValueError)  # it ran here: its error is readable here
        [run] = [r for r in s.history() if r.state == "failed"]
        assert run.error is not None and run.error.startswith("ValueError: invalid literal")
    [failed] = [e for e in seen if e.kind is workers.PoolEventKind.RUN_FAILED]
    assert failed.name == "bad" and isinstance(failed.error, ValueError)


def test_a_schedule_catches_up_what_the_downtime_missed(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    start = time.time() + 0.5
    opts: dict[str, Any] = {
        "every": 0.2,
        "start": start,
        "args": (str(out),),
        "name": "tick",
        "coalesce": False,
        "overlap": "queue",  # the backlog's runs one after the other, none skipped
    }
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        s = pool.schedule(fire_time_line, **opts)
        assert s.wait(2, 15)
    stopped = time.time()
    time.sleep(1.0)  # five fire times pass with no pool
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        # Declared again, as a script does at each start: its next time and history are kept.
        s = pool.schedule(fire_time_line, **opts)
        wait_until(lambda: len(lines(out)) >= 9, 15, "the missed runs to be made up")
        s.cancel()
    ran = [float(x) for x in lines(out)]
    assert len(ran) == len(set(ran))  # none twice
    grid = [round(start + k * 0.2, 3) for k in range(int((max(ran) - start) / 0.2 + 1.5))]
    assert sorted(ran) == grid  # none lost: the downtime's times ran after the restart
    assert any(t > stopped for t in ran)


def test_declared_again_after_its_end_a_schedule_still_runs_its_backlog(
    store_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    start = round(time.time() + 0.3, 3)
    opts: dict[str, Any] = {
        "every": 0.1,
        "start": start,
        "end": start + 0.4,
        "args": (str(out),),
        "name": "short",
        "coalesce": False,
        "misfire_grace": None,
        "overlap": "queue",
    }
    ahead = workers.Store(store_url, poll=1.0, lease=3.0)  # looks 2 s ahead: makes all five runs
    with workers.Pool(1, store=ahead, on_event=None) as pool:
        pool.schedule(fire_time_line, **opts)
        finished = "SELECT state FROM procworks_schedules"
        wait_until(lambda: query(store_url, finished) == [("finished",)], 15, "its runs to be made")
    time.sleep(max(0.0, start + 0.6 - time.time()))
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        s = pool.schedule(fire_time_line, **opts)  # after its end: the runs still due are kept
        wait_until(lambda: len(lines(out)) >= 5, 15, "the backlog to run")
        assert s.state is workers.ScheduleState.FINISHED
    assert sorted(float(x) for x in lines(out)) == [round(start + k * 0.1, 3) for k in range(5)]


def test_misfire_grace_and_coalescing_after_downtime(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[workers.PoolEvent] = []
    start = time.time() + 0.5
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        for name, grace in (("coalesced", None), ("graced", 0.1)):
            pool.schedule(
                fire_time_line, every=0.2, start=start, args=(str(out),), name=name, misfire_grace=grace
            )
    time.sleep(start + 0.9 - time.time())  # five fire times pass with no pool
    restarted = time.time()
    with workers.Pool(1, store=fast(store_url), on_event=seen.append) as pool:
        coalesced = pool.get_schedule("coalesced")
        graced = pool.get_schedule("graced")
        assert coalesced.wait(1, 15)
        wait_until(lambda: graced.missed >= 4, 15, "the late runs to be counted missed")
        coalesced.cancel()
        graced.cancel()
        backlog = [r for r in coalesced.history(100) if r.fire_time and r.fire_time.timestamp() < restarted]
    assert [r.state for r in backlog] == ["done"]  # five times due at once: one run (coalesce=True)
    assert any(e.kind is workers.PoolEventKind.RUN_MISSED and e.name == "graced" for e in seen)


def test_manage_schedules_in_the_store(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        s = pool.schedule(append_line, every="1h", args=(str(out), "x"), name="hourly")
        assert [x.name for x in pool.schedules()] == ["hourly"]
        assert pool.get_schedule("hourly").next_run_time is not None
        s.pause()
        assert pool.get_schedule("hourly").state is workers.ScheduleState.PAUSED
        assert s.next_run_time is None
        s.resume()
        s.run_now()
        wait_until(lambda: lines(out) == ["x"], 15, "the run-now run")
        s.reschedule(every="2h")
        nxt = pool.get_schedule("hourly").next_run_time
        assert nxt is not None and nxt.timestamp() > time.time() + 3600
        [run] = [r for r in s.history() if r.state == "done"]
        assert run.duration is not None and run.error is None
        s.cancel()
        assert pool.get_schedule("hourly").state is workers.ScheduleState.CANCELLED
        with pytest.raises(workers.ScheduleError, match="no schedule named 'nope'"):
            pool.get_schedule("nope")
        job = pool.submit_job(append_line, (str(out), "y"), at=time.time() + 3600, name="far")
        [tj] = pool.timed_jobs("far")
        tj.run_now()
        assert job.result(15) is None
        assert lines(out) == ["x", "y"]
        pool.submit_job(append_line, (str(out), "z"), at=time.time() + 3600, name="far2")
        [tj] = pool.timed_jobs("far2")
        tj.cancel()
        assert pool.timed_jobs() == []


def test_hosts_declaring_one_schedule_at_once_add_it_once(store_url: str) -> None:
    pools = [workers.Pool(1, store=fast(store_url), on_event=None) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(pools))

    def declare(pool: workers.Pool) -> None:
        barrier.wait(15)
        try:
            pool.schedule(os.getpid, every="1h", name="same")
        except BaseException as exc:  # noqa: BLE001 - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=declare, args=(p,)) for p in pools]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for p in pools:
            p.shutdown()
    assert errors == []
    assert query(store_url, "SELECT name, version FROM procworks_schedules") == [("same", 4)]


def test_a_change_on_one_host_reaches_the_others(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with (
        workers.Pool(1, store=fast(store_url), on_event=None) as a,
        workers.Pool(1, store=fast(store_url), on_event=None) as b,
    ):
        s = a.schedule(append_line, every=0.05, args=(str(out), "r"), name="often")
        assert s.wait(3, 15)
        b.get_schedule("often").pause()
        time.sleep(0.3)  # a run already started finishes
        n = len(lines(out))
        time.sleep(0.5)
        assert len(lines(out)) == n  # no host runs it any more
        assert a.get_schedule("often").state is workers.ScheduleState.PAUSED
        b.get_schedule("often").resume()
        wait_until(lambda: len(lines(out)) > n, 15, "runs after the resume")
        a.get_schedule("often").cancel()


def slow_line(path: str, seconds: float) -> None:
    time.sleep(seconds)
    append_line(path, "done")


def test_a_run_longer_than_the_lease_runs_once(store_url: str, tmp_path: Path) -> None:
    # APScheduler #1116: a job outliving its lease was started again by another scheduler. Here the
    # lease is the host's, renewed by its store thread while the job runs; even redeliver=True
    # (run again if the host died) finds no dead host to take the run from.
    out = tmp_path / "out"
    with (
        workers.Pool(1, store=fast(store_url), on_event=None) as a,
        workers.Pool(1, store=fast(store_url), on_event=None) as b,
    ):
        s = a.schedule(slow_line, every="1h", args=(str(out), 4.0), name="long", redeliver=True)
        s.run_now()
        assert b.get_schedule("long").wait(1, 30)
        time.sleep(1.0)
        s.cancel()
    assert lines(out) == ["done"]
    states = query(store_url, "SELECT state FROM procworks_runs WHERE schedule = 'long'")
    assert states == [("done",)]


def test_a_postgresql_restart_loses_nothing(pg_database: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(pg_database), on_event=None) as pool:
        s = pool.schedule(append_line, every=0.05, args=(str(out), "tick"), name="tick")
        assert s.wait(3, 15)
        # What a server restart does to its clients: every connection of the store's cut.
        kill = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert query(pg_database, kill)
        fut = pool.submit_after(0.2, append_line, str(out), "after")
        assert fut.result(30) is None  # submitted while the store was away: not lost
        n = len(lines(out))
        wait_until(lambda: len(lines(out)) > n + 3, 30, "the schedule to run again")
        s.cancel()
    assert "after" in lines(out)


def test_corrupt_and_unloadable_rows_are_reported_and_kept(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        pool.schedule(append_line, every="1h", args=(str(out), "ok"), name="good")
    now = time.time()
    bad = {
        "gone-module": ("every 3600", "no_such_module_xyz:run", None, "{}"),
        "bad-pickle": ("every 3600", None, b"\x80\x05not a pickle", "{}"),
        "bad-trigger": ("every banana", "os:getpid", None, "{}"),
        "bad-options": ("every 3600", "os:getpid", None, '{"max_instances": -3}'),
    }
    args = tagged(((), {}))
    for name, (trig, func, pickled, options) in bad.items():
        query(
            store_url,
            "INSERT INTO procworks_schedules (name, trig, func, callable, args, options, state, next_time,"
            " created, updated) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
            (name, trig, func, pickled, args, options, now, now, now),
        )
    seen: list[workers.PoolEvent] = []
    with workers.Pool(1, store=fast(store_url), on_event=seen.append) as pool:
        good = pool.get_schedule("good")
        good.run_now()
        wait_until(lambda: lines(out) == ["ok"], 15, "the good schedule to run")
        problems = {name: reason for kind, name, reason in pool.store_problems() if kind == "schedule"}
        good.cancel()
    assert set(problems) == set(bad)
    assert "no_such_module_xyz" in problems["gone-module"]
    assert "pickled callable cannot be loaded" in problems["bad-pickle"]
    assert "every banana" in problems["bad-trigger"]
    assert "out of range" in problems["bad-options"]
    reported = {e.name for e in seen if e.kind is workers.PoolEventKind.STORE_ROW_UNLOADABLE}
    assert reported == set(bad)
    kept = {r[0] for r in query(store_url, "SELECT name FROM procworks_schedules")}
    assert kept == {*bad, "good"}  # reported, never dropped


def test_a_store_of_the_previous_schema_is_upgraded(store_url: str) -> None:
    url = store_url
    d = SQLITE if url.startswith("sqlite") else POSTGRES
    for statement in MIGRATIONS[0]:  # a store as version 1 of the schema wrote it
        query(url, statement.format(blob=d.blob, real=d.real, serial=d.serial))
    query(url, "INSERT INTO procworks_meta VALUES ('schema_version', '1')")
    now = time.time()
    query(
        url,
        "INSERT INTO procworks_schedules"
        " (name, trig, func, args, options, state, next_time, created, updated)"
        " VALUES ('old', 'every 3600', 'os:getpid', ?, '{}', 'active', ?, ?, ?)",
        (tagged(((), {})), now + 3600, now, now),
    )
    query(
        url,
        "INSERT INTO procworks_jobs (id, name, due, func, args, options, state) VALUES"
        " ('j1', 'old-job', ?, 'os:getpid', ?, '{}', 'due')",
        (now, tagged(((), {}))),
    )
    with workers.Pool(1, store=fast(url), on_event=None) as pool:
        done = "SELECT state FROM procworks_jobs WHERE id = 'j1'"
        wait_until(lambda: query(url, done) == [("done",)], 15, "the old job to run")
        assert [s.name for s in pool.schedules()] == ["old"]
    assert query(url, "SELECT value FROM procworks_meta") == [("2",)]
    assert query(url, "SELECT version FROM procworks_schedules") == [(1,)]


def test_bad_store_urls_fail_at_pool_creation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scheme 'mysql'"):
        workers.Pool(1, store="mysql://localhost/db")
    with pytest.raises(workers.StoreError, match="cannot open the SQLite store"):
        workers.Pool(1, store=f"sqlite:///{tmp_path}/no/such/dir/jobs.db")
    with pytest.raises(ValueError, match="lease=1"):
        workers.Store("sqlite:///x.db", lease=1)


# -- several hosts, killed at random -------------------------------------------------------------


class Hosts:
    def __init__(
        self, url: str, log: Path, start: float, end: float, interval: float, extra: list[str]
    ) -> None:
        self.argv = [sys.executable, str(HERE / "store_host.py"), url, str(log), repr(start), repr(end)]
        self.argv += [repr(interval), *extra]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self.killed: set[str] = set()  # the store host ids of the hosts SIGKILLed
        self.ids: dict[int, str] = {}  # pid -> store host id

    def spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
        return subprocess.Popen(self.argv, stdout=subprocess.PIPE, env=env)

    def ready(self, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        assert line.startswith("ready "), line
        self.ids[p.pid] = line.split()[1]

    def start(self, n: int) -> None:
        self.procs = [self.spawn() for _ in range(n)]
        for p in self.procs:
            self.ready(p)

    def kill_one(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.procs))
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(30)
        self.kills += 1
        self.killed.add(self.ids[self.procs[i].pid])
        time.sleep(rng.uniform(0.0, 0.4))
        self.procs[i] = self.spawn()
        self.ready(self.procs[i])

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def hosts() -> Iterator[list[Hosts]]:
    made: list[Hosts] = []
    yield made
    for h in made:
        h.stop()


def run_shared(
    url: str,
    tmp_path: Path,
    made: list[Hosts],
    n: int,
    seconds: float,
    redeliver: bool = False,
    suspend: float | None = None,
) -> tuple[collections.Counter[float], set[float], list[float], int]:
    """``n`` hosts run a schedule every 50 ms for ``seconds``, SIGKILLed and restarted at random, or
    with ``suspend``, the first one SIGSTOPped that long (its lease expires) and continued."""
    log = tmp_path / "runs.log"
    interval = 0.05
    start = round(time.time() + 3.0, 3)
    end = start + seconds
    h = Hosts(url, log, start, end, interval, ["redeliver"] if redeliver else [])
    made.append(h)
    h.start(n)
    rng = random.Random(n * 1000 + int(seconds))
    if suspend is not None:
        time.sleep(max(0.0, start + 1.0 - time.time()))
        h.procs[0].send_signal(signal.SIGSTOP)
        time.sleep(suspend)
        h.procs[0].send_signal(signal.SIGCONT)
    while suspend is None and time.time() < end:
        time.sleep(rng.uniform(0.3, 1.2))
        h.kill_one(rng)

    def settled() -> bool:
        rows = query(url, "SELECT state, next_time FROM procworks_schedules WHERE name = 'tick'")
        pending = query(
            url, "SELECT count(*) FROM procworks_runs WHERE state IN ('due', 'claimed', 'running')"
        )
        return rows[0][0] == "finished" and pending[0][0] == 0

    wait_until(settled, 60, "every fire time to be run or recorded")
    h.stop()
    # A run is recorded interrupted only when the host that started it died: never one of a host
    # that lived (the SIGSTOPped one included: it comes back and keeps its lease, or loses it).
    holders = query(url, "SELECT fire_time, host FROM procworks_runs WHERE state = 'interrupted'")
    survivors = [(t, host) for t, host in holders if host not in h.killed and suspend is None]
    assert survivors == [], f"runs recorded interrupted whose host was never killed: {survivors[:10]}"
    ran = collections.Counter(round(float(x.split()[0]), 3) for x in log.read_text().splitlines())
    interrupted = {
        round(r[0], 3) for r in query(url, "SELECT fire_time FROM procworks_runs WHERE state = 'interrupted'")
    }
    grid = [round(start + k * interval, 3) for k in range(round(seconds / interval) + 1)]
    return ran, interrupted, grid, h.kills


def explain(url: str, times: list[float]) -> str:
    """What the store says of these fire times (for an assertion's message)."""
    rows = query(url, "SELECT fire_time, state, host, started, finished, error FROM procworks_runs")
    return repr([r for r in rows if round(r[0], 3) in set(times)][:20])


def test_a_host_of_another_machine_is_released_by_its_lease(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        pool.schedule(append_line, every="1h", args=(str(out), "x"), name="s")
    now = time.time()
    # A host elsewhere (its process cannot be asked) whose lease ends in 1 s, holding a run it
    # started and one it claimed.
    query(store_url, "INSERT INTO procworks_hosts VALUES ('ghost', 'elsewhere 1 1 pool', ?)", (now + 1.0,))
    insert = (
        "INSERT INTO procworks_runs (schedule, fire_time, state, host, started)"
        " VALUES ('s', ?, ?, 'ghost', ?)"
    )
    query(store_url, insert, (now - 5, "running", now - 5))
    query(store_url, insert, (now - 4, "claimed", None))
    states = "SELECT state FROM procworks_runs ORDER BY fire_time"
    with workers.Pool(1, store=fast(store_url), on_event=None) as pool:
        time.sleep(0.5)
        assert query(store_url, states) == [("running",), ("claimed",)]  # its lease holds
        wait_until(lambda: query(store_url, states) == [("interrupted",), ("done",)], 30, "the lease to end")
        assert time.time() >= now + 1.0 + 2.0  # the lease, then the clock skew allowed
        assert pool.get_schedule("s").interrupted == 1
    assert lines(out) == ["x"]  # the claimed run ran; the started one is not run again
    assert query(store_url, "SELECT id FROM procworks_hosts") == []


@pytest.mark.parametrize("redeliver", [False, True])
def test_a_job_whose_host_died_while_it_ran(store_url: str, tmp_path: Path, redeliver: bool) -> None:
    log = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    argv = [sys.executable, str(HERE / "store_host.py"), "job", store_url, str(log)]
    host = subprocess.Popen([*argv, "redeliver" if redeliver else "once"], stdout=subprocess.PIPE, env=env)
    try:
        assert host.stdout is not None and host.stdout.readline() == b"ready\n"
        wait_until(lambda: lines(log) == ["start"], 15, "the job to start")
        host.send_signal(signal.SIGKILL)  # the host and, with it, its worker
    finally:
        host.wait(30)
        if host.stdout is not None:
            host.stdout.close()
    seen: list[workers.PoolEvent] = []
    with workers.Pool(1, store=fast(store_url), on_event=seen.append) as pool:
        states = "SELECT state, attempt FROM procworks_jobs"
        final = ("done", 1) if redeliver else ("interrupted", 0)
        wait_until(lambda: query(store_url, states) == [final], 30, f"the job to be {final[0]}")
        assert pool.timed_jobs() == []
    if redeliver:  # run again from the start: at least once
        assert lines(log) == ["start", "start", "end"]
    else:  # at most once: recorded, with an event, and not run again
        assert lines(log) == ["start"]
        assert [e.kind for e in seen if e.name == "slow_job"] == [workers.PoolEventKind.RUN_INTERRUPTED]


@pytest.mark.slow
def test_a_suspended_host_whose_lease_expired_starts_nothing_it_claimed(
    store_url: str, tmp_path: Path, hosts: list[Hosts]
) -> None:
    # Stopped for longer than its lease (3 s) and the skew (2 s): the other host takes its claims
    # over; continued, it must not start them too.
    ran, interrupted, grid, _ = run_shared(store_url, tmp_path, hosts, 2, 9.0, suspend=6.5)
    twice = [t for t, c in ran.items() if c > 1]
    assert twice == [], explain(store_url, twice)
    lost = [t for t in grid if t not in ran and t not in interrupted]
    assert lost == [], explain(store_url, lost)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 4])
def test_hosts_killed_at_random_run_each_fire_time_once(
    store_url: str, tmp_path: Path, hosts: list[Hosts], n: int
) -> None:
    ran, interrupted, grid, kills = run_shared(store_url, tmp_path, hosts, n, 20.0)
    assert kills >= 10
    twice = [t for t, c in ran.items() if c > 1]
    assert twice == [], explain(store_url, twice)  # none twice
    assert set(ran) <= set(grid)
    # None lost: a fire time not run is one whose host was killed while it ran (at most once).
    lost = [t for t in grid if t not in ran and t not in interrupted]
    assert lost == [], explain(store_url, lost)
    # Each interrupted run's host was one of the killed (run_shared checks it); a host may have
    # started several runs when it died (2 in its workers, more due and waiting for one), so their
    # number is not bounded by the kills.


def test_a_host_killed_mid_schedule_loses_and_repeats_nothing(
    store_url: str, tmp_path: Path, hosts: list[Hosts]
) -> None:
    ran, interrupted, grid, kills = run_shared(store_url, tmp_path, hosts, 2, 4.0)
    assert kills >= 2
    twice = [t for t, c in ran.items() if c > 1]
    assert twice == [], explain(store_url, twice)
    lost = [t for t in grid if t not in ran and t not in interrupted]
    assert lost == [], explain(store_url, lost)
