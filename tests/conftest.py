"""Fixtures: every test must leave no child process, file descriptor or thread behind."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

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
