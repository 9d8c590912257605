"""Soak: 100,000 mixed jobs while workers are SIGKILLed from outside, a schedule running alongside.

Marked slow (about a minute). It checks the pool's bookkeeping end to end: every future resolved
exactly once with the right outcome, crashes blamed only on jobs that started, the parent's memory
flat, nothing leaked (the autouse fixture checks processes, threads and descriptors).
"""

from __future__ import annotations

import array
import os
import random
import signal
import threading
from pathlib import Path

import jobs
import pytest
from helpers import titled

import workers
from workers import WorkerCrashed

pytestmark = pytest.mark.slow

JOBS = 100_000
KILL_EVERY = 100  # completions between two SIGKILLs of a random worker
OK, RAISED, CRASHED, WRONG = 1, 2, 3, 4


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(600)
def test_soak_mixed_jobs_under_worker_kills(tmp_path: Path) -> None:
    log = tmp_path / "started"
    ticks = tmp_path / "ticks"
    name = "soak"
    rng = random.Random(7)
    kinds = bytes(rng.choice((0, 0, 0, 0, 0, 0, 1, 2)) for _ in range(JOBS))  # 0 add, 1 raise, 2 sleep
    calls = array.array("H", bytes(2 * JOBS))  # how often each job's future resolved
    outcome = bytearray(JOBS)
    lock = threading.Lock()
    completions = 0
    kills = 0

    def kill_one() -> None:
        nonlocal kills
        pids = sorted(titled(f"procman: worker 1 ({name})") | titled(f"procman: worker 2 ({name})"))
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass

    def on_done(i: int, fut: workers.JobFuture[int]) -> None:
        # Judged here, and the future dropped: the parent holds no more than max_pending of them.
        nonlocal completions
        err = fut.exception(0)
        if isinstance(err, WorkerCrashed):
            verdict = CRASHED
        elif kinds[i] == 1:
            verdict = RAISED if isinstance(err, ValueError) and err.args == (i,) else WRONG
        else:
            verdict = OK if err is None and fut.result(0) == i * 2 else WRONG
        with lock:
            calls[i] += 1
            outcome[i] = verdict
            completions += 1
            due = completions % KILL_EVERY == 0
        if due:
            kill_one()

    with workers.Pool(
        2,
        name=name,
        on_event=None,
        max_pending=2000,
        initializer=jobs.soak_init,
        initargs=(str(log),),
    ) as pool:
        sched = pool.schedule(jobs.append_time, every=0.05, args=(str(ticks),))
        rss_early = 0
        for i in range(JOBS):
            pool.submit(jobs.soak_job, str(log), i, kinds[i]).add_done_callback(
                lambda fut, i=i: on_done(i, fut)
            )
            if i == JOBS // 5:
                rss_early = _rss_kb()
        pool.shutdown()  # waits for every job
        runs = sched.runs
    rss_late = _rss_kb()

    assert all(c == 1 for c in calls), [i for i, c in enumerate(calls) if c != 1][:10]
    assert WRONG not in outcome, [i for i, v in enumerate(outcome) if v == WRONG][:10]
    started = {int(x) for x in log.read_text().split()}
    victims = [i for i, v in enumerate(outcome) if v == CRASHED]
    never_started = [i for i in victims if i not in started]
    growth_mb = (rss_late - rss_early) / 1024
    print(
        f"soak: {kills} kills, {len(victims)} crashed, {len(never_started)} without their line, "
        f"{runs} schedule runs, parent RSS {growth_mb:+.1f} MB from 20% to 100%"
    )
    assert kills >= JOBS // KILL_EVERY // 2, f"only {kills} kills: the test did not stress the pool"
    assert len(victims) <= kills  # a kill fails at most the one job its worker was running
    # A job's first step is its line in the log; a kill can land between the worker marking the
    # job started and that write (a microsecond), so a victim may rarely lack its line. A job
    # blamed without having started (the bug this guards) showed up ~200 times in 100,000.
    assert len(never_started) <= max(2, kills // 100), f"blamed without starting: {never_started[:10]}"
    assert runs >= 3  # the schedule kept running through the kills
    assert growth_mb < 30, f"the parent grew by {growth_mb:.0f} MB from 20% to 100% of the jobs"
