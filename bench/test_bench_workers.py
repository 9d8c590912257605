"""workers.Pool figures, with concurrent.futures.ProcessPoolExecutor beside them in the same run.

Run: .venv/bin/python -m pytest bench -p no:cacheprovider --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jobs_bench import add, now

import workers

WORKERS = 2


@pytest.fixture(scope="module")
def pool() -> Iterator[workers.Pool]:
    p = workers.Pool(WORKERS, on_event=None)
    for f in [p.submit(add, i, 1) for i in range(200)]:  # warm: every worker up and used
        f.result(60)
    yield p
    p.shutdown(wait=True, cancel_futures=True, timeout=30)


@pytest.fixture(scope="module")
def ppe() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    ex = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver"))
    for f in [ex.submit(add, i, 1) for i in range(200)]:
        f.result(60)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def _round_trip(executor: concurrent.futures.Executor, fn: Callable[..., Any]) -> Callable[[], Any]:
    def once() -> Any:
        return executor.submit(fn, 1, 2).result(30)

    return once


def test_round_trip_plain(benchmark: Any, pool: workers.Pool) -> None:
    assert benchmark(_round_trip(pool, add)) == 3


def test_round_trip_lambda(benchmark: Any, pool: workers.Pool) -> None:
    fn = lambda a, b: a + b  # noqa: E731 - the point is a lambda
    assert benchmark(_round_trip(pool, fn)) == 3


def test_round_trip_process_pool_executor(
    benchmark: Any, ppe: concurrent.futures.ProcessPoolExecutor
) -> None:
    assert benchmark(_round_trip(ppe, add)) == 3


def _burst(executor: concurrent.futures.Executor, n: int) -> Callable[[], int]:
    def run() -> int:
        futs = [executor.submit(add, i, 1) for i in range(n)]
        return sum(f.result(120) for f in futs)

    return run


def test_throughput_20000_jobs(benchmark: Any, pool: workers.Pool) -> None:
    result = benchmark.pedantic(_burst(pool, 20_000), rounds=3, iterations=1, warmup_rounds=1)
    assert result == sum(range(1, 20_001))
    benchmark.extra_info["jobs_per_second"] = 20_000 / benchmark.stats.stats.median


def test_throughput_20000_jobs_process_pool_executor(
    benchmark: Any, ppe: concurrent.futures.ProcessPoolExecutor
) -> None:
    result = benchmark.pedantic(_burst(ppe, 20_000), rounds=3, iterations=1, warmup_rounds=1)
    assert result == sum(range(1, 20_001))
    benchmark.extra_info["jobs_per_second"] = 20_000 / benchmark.stats.stats.median


def test_schedule_100000_future_jobs(benchmark: Any, pool: workers.Pool) -> None:
    futures: list[concurrent.futures.Future[Any]] = []

    def schedule() -> None:
        base = time.time() + 3600
        futures.extend(pool.submit_at(base + i * 1e-3, add, i, 1) for i in range(100_000))

    def cancel() -> tuple[tuple[()], dict[str, Any]]:
        for f in futures:
            f.cancel()
        futures.clear()
        return (), {}

    benchmark.pedantic(schedule, setup=cancel, rounds=3, iterations=1)
    cancel()


def test_timed_job_lateness_with_100000_pending(benchmark: Any, pool: workers.Pool) -> None:
    """Lateness of 400 jobs due over 4 s, checked by the worker's clock, with 100,000 jobs pending."""
    far = [pool.submit_after(3600 + i * 1e-3, add, i, 1) for i in range(100_000)]
    lateness: list[float] = []

    def run() -> None:
        start = time.time() + 0.3
        futs = [(start + i * 0.01, pool.submit_at(start + i * 0.01, now)) for i in range(400)]
        lateness.extend(f.result(60) - due for due, f in futs)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        for f in far:
            f.cancel()
    lateness.sort()
    benchmark.extra_info.update(
        lateness_p50_ms=lateness[len(lateness) // 2] * 1e3,
        lateness_p99_ms=lateness[int(len(lateness) * 0.99)] * 1e3,
        lateness_max_ms=lateness[-1] * 1e3,
        early=sum(1 for x in lateness if x < 0),
    )
    assert min(lateness) >= -0.001  # never (measurably) early
