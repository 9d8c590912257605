"""Fixtures: every test must leave no child process, file descriptor or thread behind."""

from __future__ import annotations

import copyreg
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask_host
import pytest
from daemons import Quick
from helpers import Events, Recorder, descendants

import procman
from procman._proc.start import get_context


def _helper_pids() -> set[int]:
    """multiprocess's long-lived helpers (forkserver, resource tracker) are not leaks."""
    pids: set[int] = set()
    from multiprocess import forkserver, resource_tracker

    fs = getattr(forkserver._forkserver, "_forkserver_pid", None)
    rt = getattr(resource_tracker._resource_tracker, "_pid", None)
    pids.update(p for p in (fs, rt) if p)
    return pids


@pytest.fixture(scope="session", autouse=True)
def _warm_helpers() -> None:
    # Start the forkserver and resource tracker once so per-test fd/thread counts are stable.
    ctx = get_context("forkserver")
    with procman.Manager(on_event=None) as m:
        m.register(Quick("warm-up"))
        m.start(timeout=30)
    del ctx


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    me = os.getpid()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        helpers = _helper_pids()
        leaked = descendants([me]) - helpers
        leaked |= descendants(helpers)
        leaked -= _SIDECARS | descendants(_SIDECARS)  # the tests' Dask cluster and its workers
        extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        fds = _fds()
        if not leaked and not extra_threads and fds <= fds_before:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in leaked:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    problems = []
    if leaked:
        problems.append(f"leaked processes {sorted(leaked)}")
    if extra_threads:
        problems.append(f"leaked threads {[t.name for t in extra_threads]}")
    if fds > fds_before:
        problems.append(f"leaked {fds - fds_before} file descriptors")
    pytest.fail("; ".join(problems))


@pytest.fixture
def events() -> Events:
    """A pool's event hook that records what it gets (see helpers.Events)."""
    return Events()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


# -- a Dask cluster for the tests of the Dask backend ------------------------------------------------

_SIDECARS: set[int] = set()  # processes the session keeps for all its tests (not leaks)
DASK_WORKERS = 2


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str | None]:
    """A 2-worker LocalCluster in a process of its own (tests/dask_host.py), for the whole session;
    None where Dask distributed is not installed (the Dask tests then skip, saying so).

    Made before any test that needs it (and so before that test's leak check): a pool on it is
    started and shut down once here, so that what Dask keeps for the process (its threads, its
    imports) is there before the first test counts.
    """
    # Importing distributed installs tblib's reducers for every exception class and for tracebacks
    # (copyreg), in the whole process: exceptions that could not be unpickled then can. The rest of
    # the suite tests pickling as a process without Dask sees it, so the table is put back.
    saved = dict(copyreg.dispatch_table)
    try:
        import distributed  # noqa: F401
    except ImportError:
        yield None
        return
    finally:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(saved)
    import workers

    with dask_host.running(DASK_WORKERS) as host:
        _SIDECARS.add(host.pid)
        try:
            with workers.Pool(backend=workers.DaskBackend(host.address), on_event=None) as pool:
                assert pool.submit(abs, -1).result(60) == 1
            yield host.address
        finally:
            _SIDECARS.discard(host.pid)


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A PostgreSQL server for the session: $PROCWORKS_PG_URL (.ci/run starts one), else one started
    here in a temporary directory (tests/pg_server.py); None, said in one loud line, if neither."""
    import contextlib

    import pg_server as pg

    reason = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is not installed (pip install -e '.[test]')"
    with contextlib.ExitStack() as stack:
        started: set[int] = set()
        url = None
        if reason is None:
            before = descendants([os.getpid()])
            try:
                url = stack.enter_context(pg.server())
            except pg.PostgresUnavailable as exc:
                reason = str(exc)
            started = descendants([os.getpid()]) - before
            _SIDECARS.update(started)
        if url is None:
            terminal = request.config.pluginmanager.get_plugin("terminalreporter")
            line = f"POSTGRESQL UNAVAILABLE: {reason}; the PostgreSQL tests are skipped"
            if terminal is not None:
                terminal.write_line(line, red=True, bold=True)
            request.config.stash[PG_SKIPPED] = line
        try:
            yield url
        finally:
            stack.close()
            _SIDECARS.difference_update(started)


PG_SKIPPED = pytest.StashKey[str]()


@pytest.fixture
def pg_database(request: pytest.FixtureRequest, pg_server: str | None) -> str:
    """A new, empty database on the session's PostgreSQL server, for one test."""
    import uuid

    import pg_server as pg

    if pg_server is None:
        pytest.skip(request.config.stash.get(PG_SKIPPED, "no PostgreSQL server"))
    return pg.new_database(pg_server, f"t_{uuid.uuid4().hex[:12]}")


BACKENDS = ["local", "dask"]


class PoolMaker:
    """``make_pool(max_workers, **options)``: a workers.Pool on one backend (``kind``: "local" or
    "dask"), every pool it made shut down after the test."""

    def __init__(self, kind: str, dask_address: str | None) -> None:
        import workers

        self.kind = kind
        self.backend = workers.DaskBackend(dask_address) if kind == "dask" else None
        self.made: list[workers.Pool] = []

    def __call__(self, max_workers: int | None = 2, **options: Any) -> Any:
        import workers

        options.setdefault("on_event", None)
        pool = workers.Pool(max_workers, backend=self.backend, **options)
        self.made.append(pool)
        return pool

    def close(self) -> None:
        for pool in self.made:
            pool.shutdown(wait=False, cancel_futures=True)
        for pool in self.made:
            pool.shutdown(timeout=30)


@pytest.fixture(params=BACKENDS)
def make_pool(request: pytest.FixtureRequest, dask_address: str | None) -> Iterator[PoolMaker]:
    """A PoolMaker for each backend in turn: local processes, then the session's Dask cluster."""
    if request.param == "dask" and dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    maker = PoolMaker(request.param, dask_address)
    yield maker
    maker.close()
