"""The supervisor's rules on scripted fake children, in virtual time: no process, no sleep.

Each daemon's child is a FakeChild (tests/fakes.py) playing a Script: when it says ready, when
it crashes, how it answers a stop and a SIGTERM. The loop's clock jumps from one timer to the
next, so every timeout, backoff and deadline below holds to the exact virtual second. The same
rules run on real processes in test_manager.py and test_supervision_faults.py.
"""

from __future__ import annotations

import signal
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import fakes
import pytest
from daemons import Quick
from fakes import CHILDREN, SCRIPTS, FakeChild, Script, VirtualTimeLoop

from procman import (
    DaemonError,
    DaemonState,
    Event,
    OperationTimeout,
    Restart,
    RestartPolicy,
    StartError,
    StopOutcome,
)
from procman._daemon import make_spec
from procman._proc.output import OutputRouter
from procman._supervisor import Supervisor

T = TypeVar("T")

NO_JITTER = RestartPolicy(restart=Restart.ON_FAILURE, jitter=0.0, backoff_initial=1.0, backoff_factor=2.0)


class Rig:
    def __init__(self) -> None:
        self.loop = VirtualTimeLoop()
        self.events: list[tuple[float, Event]] = []
        emit = self.record
        output = OutputRouter(lambda *line: None, "procman.daemon", "daemon", emit)
        self.sup = Supervisor(
            self.loop, "forkserver", emit, clock=self.loop.time, output=output, child_factory=FakeChild
        )

    def record(self, event: Event) -> None:
        self.events.append((self.loop.time(), event))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def add(self, name: str, *scripts: Script, policy: RestartPolicy = NO_JITTER, **options: Any) -> None:
        SCRIPTS[name] = list(scripts) or [Script()]
        opts = {"start_timeout": 10.0, "stop_timeout": 5.0, "term_timeout": 2.0, "watchdog": None} | options
        self.run(self.sup.register(make_spec(Quick(name), restart=policy, **opts)))

    def advance(self, seconds: float) -> None:
        async def wait() -> None:
            import asyncio

            await asyncio.sleep(seconds)

        self.run(wait())

    def timeline(self, name: str) -> list[tuple[float, str]]:
        return [(round(t, 6), e.kind.value) for t, e in self.events if e.name == name]

    def state(self, name: str) -> DaemonState:
        return self.sup.status()[name].state


@pytest.fixture
def rig() -> Iterator[Rig]:
    SCRIPTS.clear()
    CHILDREN.clear()
    made = Rig()
    yield made
    made.sup.force_close(made.sup.slots.values())
    made.loop.close()


def test_start_returns_when_every_daemon_is_ready_and_they_start_together(rig: Rig) -> None:
    rig.add("a", Script(ready=0.3))
    rig.add("b", Script(ready=0.7))
    rig.run(rig.sup.start(timeout=10))
    assert rig.loop.time() == pytest.approx(0.7)  # concurrently: the slower one, not the sum
    assert rig.timeline("a") == [(0.0, "started"), (0.3, "ready")]
    assert rig.state("a") is DaemonState.RUNNING and rig.state("b") is DaemonState.RUNNING


def test_a_crash_is_restarted_after_its_backoff_and_the_streak_grows_it(rig: Rig) -> None:
    rig.add("web", Script(ready=0.1, crash=1.0), Script(ready=0.1, crash=0.5), Script(ready=0.1))
    rig.run(rig.sup.start(timeout=10))
    rig.advance(10)
    # 1st restart at once, then backoff_initial, doubling (jitter 0): the policy's arithmetic.
    assert rig.timeline("web") == [
        (0.0, "started"),
        (0.1, "ready"),
        (1.0, "exited"),
        (1.0, "started"),
        (1.1, "ready"),
        (1.5, "exited"),
        (1.5, "backing-off"),
        (2.5, "started"),
        (2.6, "ready"),
    ]
    assert rig.state("web") is DaemonState.RUNNING
    assert rig.sup.status()["web"].restarts == 2


def test_too_many_restarts_within_the_window_give_up(rig: Rig) -> None:
    policy = RestartPolicy(jitter=0.0, backoff_initial=0.0, max_restarts=2, within=60.0)
    rig.add("flaky", Script(ready=0.1, crash=0.2), policy=policy)
    rig.run(rig.sup.start(timeout=10))
    rig.advance(5)
    kinds = [k for _, k in rig.timeline("flaky")]
    assert kinds.count("started") == 3 and kinds[-1] == "gave-up"
    assert rig.state("flaky") is DaemonState.GAVE_UP


def test_a_crash_during_a_siblings_start_is_restarted(rig: Rig) -> None:
    """Supervised from its own READY on, not from the whole batch's."""
    rig.add("fast", Script(ready=0.1, crash=0.5), Script(ready=0.1))
    rig.add("slow", Script(ready=3.0))
    rig.run(rig.sup.start(timeout=10))
    assert rig.loop.time() == pytest.approx(3.0)
    assert [k for _, k in rig.timeline("fast")] == ["started", "ready", "exited", "started", "ready"]
    assert rig.state("fast") is DaemonState.RUNNING


def test_a_start_that_is_never_ready_fails_at_the_deadline_and_takes_its_batch_down(rig: Rig) -> None:
    rig.add("ok", Script(ready=0.1))
    rig.add("stuck", Script(ready=None))
    with pytest.raises(StartError) as caught:
        rig.run(rig.sup.start(timeout=4))
    assert isinstance(caught.value.failures["stuck"], OperationTimeout)
    assert rig.loop.time() == pytest.approx(4.0 + 0.05, abs=0.01)  # the deadline, then ok's stop()
    assert rig.state("ok") is DaemonState.STOPPED  # all or nothing: the ready one was stopped
    assert [k for _, k in rig.timeline("ok")] == ["started", "ready", "exited", "stopped"]
    assert signal.SIGKILL in CHILDREN[1].signals  # the stuck one: no stop() to ask, killed


def test_a_crash_while_its_batch_is_taken_down_is_not_restarted(rig: Rig) -> None:
    rig.add("ok", Script(ready=0.1, stop=None, crash=4.01))  # dies on its own during the abort
    rig.add("stuck", Script(ready=None))
    with pytest.raises(StartError):
        rig.run(rig.sup.start(timeout=4))
    rig.advance(30)
    assert [k for _, k in rig.timeline("ok")].count("started") == 1
    assert rig.state("ok") is DaemonState.STOPPED


def test_stop_escalates_to_sigterm_then_sigkill_inside_the_deadline(rig: Rig) -> None:
    rig.add("stubborn", Script(ready=0.1, stop=None, term=None), stop_timeout=3.0, term_timeout=2.0)
    rig.add("polite", Script(ready=0.1, stop=0.5))
    rig.add("termed", Script(ready=0.1, stop=None, term=0.2), stop_timeout=3.0)
    rig.run(rig.sup.start(timeout=10))
    t0 = rig.loop.time()
    report = rig.run(rig.sup.stop(timeout=20))
    assert report.outcomes == {
        "stubborn": StopOutcome.KILLED,
        "polite": StopOutcome.STOPPED,
        "termed": StopOutcome.TERMINATED,
    }
    assert rig.loop.time() - t0 == pytest.approx(5.0)  # stop 3 s + SIGTERM 2 s, then SIGKILL
    line = [(round(t - t0, 6), k) for t, k in rig.timeline("stubborn") if t > t0]
    assert line == [(3.0, "stop-timed-out"), (5.0, "killed"), (5.0, "exited"), (5.0, "stopped")]
    assert all(s.state is DaemonState.STOPPED for s in rig.sup.status().values())


def test_a_short_deadline_shrinks_the_escalation_but_sigkill_comes_in_time(rig: Rig) -> None:
    rig.add("stubborn", Script(ready=0.1, stop=None, term=None), stop_timeout=30.0, term_timeout=30.0)
    rig.run(rig.sup.start(timeout=10))
    t0 = rig.loop.time()
    report = rig.run(rig.sup.stop(timeout=4))
    assert report.outcomes["stubborn"] is StopOutcome.KILLED
    assert rig.loop.time() - t0 == pytest.approx(4.0)
    stop_timed_out = next(t for t, k in rig.timeline("stubborn") if k == "stop-timed-out")
    assert stop_timed_out - t0 == pytest.approx(2.0)  # SIGTERM keeps half of the 4 s


def test_a_second_stop_request_kills_at_once(rig: Rig) -> None:
    rig.add("slow-stop", Script(ready=0.1, stop=30.0, term=None), stop_timeout=60.0, term_timeout=60.0)
    rig.run(rig.sup.start(timeout=10))
    first = rig.loop.create_task(rig.sup.stop(timeout=100))
    rig.advance(1.0)
    t1 = rig.loop.time()
    rig.run(rig.sup.stop(timeout=100))
    assert rig.run(first).outcomes["slow-stop"] is StopOutcome.KILLED
    assert rig.loop.time() == pytest.approx(t1)  # no waiting for the 30 s stop()


def test_a_daemon_stopped_by_request_is_never_restarted(rig: Rig) -> None:
    rig.add("web", Script(ready=0.1, stop=0.1))
    rig.run(rig.sup.start(timeout=10))
    assert rig.run(rig.sup.stop_one("web", timeout=10)) is StopOutcome.STOPPED
    rig.advance(60)
    assert [k for _, k in rig.timeline("web")].count("started") == 1
    assert rig.state("web") is DaemonState.STOPPED


def test_a_stop_during_backoff_cancels_the_restart(rig: Rig) -> None:
    policy = RestartPolicy(jitter=0.0, backoff_initial=10.0)
    rig.add("web", Script(ready=0.1, crash=0.5), Script(ready=0.1, crash=0.5), Script(), policy=policy)
    rig.run(rig.sup.start(timeout=10))
    rig.advance(2.0)  # crashed twice: now waiting 10 s before the next restart
    assert rig.state("web") is DaemonState.BACKOFF
    assert rig.run(rig.sup.stop_one("web", timeout=5)) is StopOutcome.NOT_RUNNING
    rig.advance(60)
    assert rig.state("web") is DaemonState.STOPPED
    assert [k for _, k in rig.timeline("web")].count("started") == 2


def test_a_stop_during_a_restarts_start_leaves_no_unretrieved_error(rig: Rig) -> None:
    """The restarted process exits (on the stop) before it was ready: the error its start future
    then holds is nobody's to await, and must not be logged as never retrieved when collected
    (asyncio's "Future exception was never retrieved" at the end of ``procman run``)."""
    rig.add("consumer", Script(ready=0.1, crash=0.5), Script(ready=None, stop=0.05))
    rig.run(rig.sup.start(timeout=10))
    rig.advance(1.0)  # crashed at 0.5, restarted at once: starting, never ready
    assert rig.state("consumer") is DaemonState.STARTING
    fut = rig.sup.slots["consumer"].ready_fut
    assert rig.run(rig.sup.stop(timeout=5)).clean
    assert fut is not None and fut.done() and not fut.cancelled()
    assert not fut._log_traceback  # what asyncio reports at collection: nobody retrieved it


def test_restart_on_failure_leaves_a_clean_exit_alone(rig: Rig) -> None:
    rig.add("job", Script(ready=0.1, crash=1.0, crash_code=0))
    rig.run(rig.sup.start(timeout=10))
    rig.advance(30)
    assert rig.state("job") is DaemonState.EXITED
    assert [k for _, k in rig.timeline("job")] == ["started", "ready", "exited"]


def test_a_restart_by_policy_that_is_never_ready_is_killed_at_start_timeout(rig: Rig) -> None:
    rig.add("web", Script(ready=0.1, crash=1.0), Script(ready=None), Script(), start_timeout=3.0)
    rig.run(rig.sup.start(timeout=10))
    rig.advance(10)
    line = rig.timeline("web")
    assert (4.0, "killed") in line  # restarted at 1.0, not ready by 1.0 + 3.0
    assert rig.state("web") is DaemonState.RUNNING  # and the policy tried again


def test_dependencies_start_in_order_and_stop_in_reverse(rig: Rig) -> None:
    rig.add("db", Script(ready=1.0, stop=0.5))
    rig.add("app", Script(ready=0.5, stop=0.5), depends_on=["db"])
    rig.run(rig.sup.start(timeout=10))
    assert rig.timeline("app")[0] == (1.0, "started")  # once db is ready
    t0 = rig.loop.time()
    rig.run(rig.sup.stop(timeout=10))
    app_stopped = next(t for t, k in rig.timeline("app") if k == "stopped")
    db_stop_asked = min(t for t, e in rig.events if e.name == "db" and t > t0)
    assert app_stopped <= db_stop_asked  # db stops after its dependent


def test_a_dependency_on_an_unknown_daemon_is_refused_before_anything_starts(rig: Rig) -> None:
    rig.add("app", Script(), depends_on=["nope"])
    with pytest.raises(DaemonError, match="depends on 'nope', which is not registered"):
        rig.run(rig.sup.start(timeout=10))
    assert fakes.CHILDREN == []


def test_a_crash_in_the_same_instant_as_ready_is_restarted(rig: Rig) -> None:
    """Supervision starts with READY itself, not when start()'s coroutine next runs."""
    rig.add("blink", Script(ready=0.5, crash=0.5), Script(ready=0.1))
    rig.add("slow", Script(ready=2.0))
    rig.run(rig.sup.start(timeout=10))
    assert [k for _, k in rig.timeline("blink")] == ["started", "ready", "exited", "started", "ready"]
    assert rig.state("blink") is DaemonState.RUNNING
