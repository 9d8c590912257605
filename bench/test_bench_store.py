"""What a store costs, with the memory-only pool beside it in the same run: adding timed jobs, and
a timed job's lateness.

Run: .venv/bin/python -m pytest bench/test_bench_store.py -p no:cacheprovider --benchmark-enable
--benchmark-only. bench/store_compare.py alternates the two over rounds and reports the ratios.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_bench import add

import workers

BATCH = 10_000


@pytest.fixture(params=["memory", "sqlite"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[workers.Pool]:
    store = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else None
    p = workers.Pool(2, store=store, on_event=None)
    yield p
    p.shutdown(cancel_futures=True)


def test_add_10k_timed_jobs(benchmark: Any, pool: workers.Pool) -> None:
    def add_batch() -> None:
        far = time.time() + 3600
        for i in range(BATCH):
            pool.submit_at(far + i * 0.001, add, i, 1)
        store = pool._store
        if store is not None:
            store.call(lambda cur: None)  # returns once every row is committed

    benchmark.pedantic(add_batch, rounds=3, iterations=1)


def test_timed_job_start(benchmark: Any, pool: workers.Pool) -> None:
    """From a job's due time to its result here: lateness plus the way back."""

    def timed() -> int:
        return pool.submit_at(time.time() + 0.05, add, 1, 2).result(30)  # type: ignore[no-any-return]

    assert benchmark.pedantic(timed, rounds=20, iterations=1) == 3
