"""procman figures: restart latency after SIGKILL and 50 daemons ready concurrently, per start method.

The daemon lives in jobs_bench, a module that does not import pytest: each child imports it.

Run: .venv/bin/python -m pytest bench -p no:cacheprovider --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jobs_bench import Noop

import procman

METHODS = ["forkserver", "fork", "spawn"]


class ReadyWatch:
    """Event hook: READY events with the time they reached the hook."""

    def __init__(self) -> None:
        self.ready: queue.SimpleQueue[tuple[float, int | None]] = queue.SimpleQueue()

    def __call__(self, event: procman.Event) -> None:
        if event.kind is procman.EventKind.READY:
            self.ready.put((time.perf_counter(), event.pid))


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def one_daemon(method: str) -> Iterator[tuple[procman.Manager, ReadyWatch]]:
    watch = ReadyWatch()
    policy = procman.RestartPolicy(restart="always", max_restarts=1_000_000, within=1.0, reset_after=0)
    with procman.Manager(start_method=method, on_event=watch) as manager:
        manager.register(Noop("svc"), restart=policy)
        manager.start(timeout=60)
        watch.ready.get(timeout=30)
        yield manager, watch


def test_restart_after_sigkill(
    benchmark: Any, method: str, one_daemon: tuple[procman.Manager, ReadyWatch]
) -> None:
    """SIGKILL of the daemon's process -> its replacement is ready (seen by the event hook)."""
    manager, watch = one_daemon
    samples: list[float] = []

    def kill_and_wait() -> None:
        pid = manager.status()["svc"].pid
        assert pid is not None
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            t1, new_pid = watch.ready.get(timeout=30)
            if new_pid != pid:
                break
        samples.append(t1 - t0)

    rounds = 10 if method == "spawn" else 40
    benchmark.pedantic(kill_and_wait, rounds=rounds, iterations=1, warmup_rounds=2)
    samples.sort()
    benchmark.extra_info.update(
        p50_ms=samples[len(samples) // 2] * 1e3, p99_ms=samples[int(len(samples) * 0.99)] * 1e3
    )


def test_fifty_daemons_ready(benchmark: Any, method: str) -> None:
    """start(): 50 daemons spawned concurrently until every one is ready."""
    with procman.Manager(start_method=method, on_event=None) as manager:
        for i in range(50):
            manager.register(Noop(f"daemon-{i}"))

        def start() -> None:
            manager.start(timeout=120)

        def stop() -> tuple[tuple[()], dict[str, Any]]:
            if manager.running:
                assert manager.stop(timeout=30).clean
            return (), {}

        benchmark.pedantic(
            start, setup=stop, rounds=3 if method == "spawn" else 5, iterations=1, warmup_rounds=1
        )
        stop()
