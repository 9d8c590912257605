"""Restart policy arithmetic with a fake clock: no processes, no sleeping."""

from __future__ import annotations

import pytest

from procman import DaemonError, Restart, RestartPolicy
from procman._policy import RestartTracker, Verdict


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(**kw: object) -> tuple[RestartTracker, FakeClock]:
    clock = FakeClock()
    policy = RestartPolicy(**kw)  # type: ignore[arg-type]
    return RestartTracker(policy, clock=clock, rng=lambda: 0.5), clock


def test_first_restart_is_immediate_then_exponential_and_capped() -> None:
    t, clock = tracker(
        restart="always", backoff_initial=0.5, backoff_factor=2, backoff_max=3, max_restarts=100, within=1000
    )
    delays = []
    for _ in range(6):
        d = t.on_exit(failed=True, uptime=0.1)
        assert d.verdict is Verdict.RESTART
        delays.append(d.delay)
        clock.now += 1
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert t.restarts == 6


def test_jitter_stays_within_its_band() -> None:
    for r, expected in ((0.0, 0.9), (1.0, 1.1), (0.5, 1.0)):
        clock = FakeClock()
        t = RestartTracker(
            RestartPolicy(restart="always", backoff_initial=1, jitter=0.1), clock, lambda r=r: r
        )
        t.on_exit(failed=True, uptime=0)
        assert t.on_exit(failed=True, uptime=0).delay == pytest.approx(expected)


def test_stable_uptime_resets_the_streak() -> None:
    t, _ = tracker(restart="always", backoff_initial=1, reset_after=10, max_restarts=100)
    assert t.on_exit(failed=True, uptime=0).delay == 0
    assert t.on_exit(failed=True, uptime=1).delay == 1
    assert t.on_exit(failed=True, uptime=11).delay == 0  # ran long enough: new streak
    assert t.streak == 1


def test_intensity_limit_gives_up_and_window_slides() -> None:
    t, clock = tracker(restart="always", max_restarts=3, within=10)
    for _ in range(3):
        assert t.on_exit(failed=True, uptime=0).verdict is Verdict.RESTART
        clock.now += 1
    d = t.on_exit(failed=True, uptime=0)
    assert d.verdict is Verdict.GIVE_UP and "3 restarts within 10s" in d.reason
    t2, clock2 = tracker(restart="always", max_restarts=3, within=10)
    for _ in range(10):
        assert t2.on_exit(failed=True, uptime=0).verdict is Verdict.RESTART
        clock2.now += 4  # never more than 3 within 10 s


@pytest.mark.parametrize(
    ("restart", "failed", "verdict"),
    [
        ("always", False, Verdict.RESTART),
        ("always", True, Verdict.RESTART),
        ("on-failure", False, Verdict.EXITED),
        ("on-failure", True, Verdict.RESTART),
        ("never", True, Verdict.EXITED),
        (Restart.NEVER, False, Verdict.EXITED),
    ],
)
def test_restart_types(restart: str, failed: bool, verdict: Verdict) -> None:
    t, _ = tracker(restart=restart)
    assert t.on_exit(failed=failed, uptime=0).verdict is verdict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"restart": "sometimes"}, "restart='sometimes' is not a restart type"),
        ({"backoff_initial": -1}, "backoff_initial=-1 must be a number of seconds from 0 to 100 years"),
        ({"backoff_factor": 0.5}, "backoff_factor=0.5 must be from 1 to 1000"),
        ({"jitter": 1.5}, "jitter=1.5 must be in [0, 1)"),
        ({"max_restarts": -2}, "max_restarts=-2"),
        ({"within": "soon"}, "within='soon'"),
    ],
)
def test_bad_policy_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DaemonError) as info:
        RestartPolicy(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
