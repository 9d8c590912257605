"""The Dask backend's round trip, with raw Dask's on the same cluster beside it in the same run.

Run: .venv/bin/python -m pytest bench/test_bench_dask.py -p no:cacheprovider --benchmark-enable
--benchmark-only (needs procworks[dask]). bench/dask_compare.py interleaves them, with jobs/s and
timed lateness, and reports the ratios.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_bench import add

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import dask_host

import workers

pytest.importorskip("distributed")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A 2-worker LocalCluster made as the backend requires (tests/dask_host.py), jobs_bench importable."""
    with dask_host.running(2, pythonpath=str(HERE)) as host:
        yield host.address


@pytest.fixture(scope="module")
def pool(address: str) -> Iterator[workers.Pool]:
    p = workers.Pool(backend=workers.DaskBackend(address), on_event=None)
    for f in [p.submit(add, i, 1) for i in range(50)]:
        f.result(60)
    yield p
    p.shutdown(timeout=30)


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Any]:
    from distributed import Client

    c = Client(address, set_as_default=False)
    for f in [c.submit(add, i, 1, pure=False) for i in range(50)]:
        f.result(60)
    yield c
    c.close()


def test_round_trip_dask_backend(benchmark: Any, pool: workers.Pool) -> None:
    assert benchmark(lambda: pool.submit(add, 1, 2).result(60)) == 3


def test_round_trip_raw_client_submit(benchmark: Any, client: Any) -> None:
    assert benchmark(lambda: client.submit(add, 1, 2, pure=False).result(60)) == 3
