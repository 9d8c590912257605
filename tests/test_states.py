"""A daemon's states, pure: the move table's promises, and the stop escalation's arithmetic."""

from __future__ import annotations

import itertools

import pytest

from procman import DaemonState
from procman._states import MOVES, Phase, check_move, escalation

AFTER_POLICY = {Phase.BACKOFF, Phase.GAVE_UP, Phase.EXITED}


def test_every_phase_has_its_moves_and_a_public_state() -> None:
    assert set(MOVES) == set(Phase)
    assert {p.public for p in Phase} == set(DaemonState)
    assert Phase.RESTARTING.public is DaemonState.STARTING  # callers see a restart as starting


def test_every_phase_is_reachable_from_a_registered_daemon() -> None:
    seen, todo = {Phase.STOPPED}, [Phase.STOPPED]
    while todo:
        for nxt in MOVES[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Phase)


def test_a_stop_is_never_undone() -> None:
    """Once a stop was asked, the exit ends in STOPPED: never a restart, never the policy."""
    assert MOVES[Phase.STOPPING] == {Phase.STOPPED}
    for phase in (Phase.STARTING, Phase.RESTARTING, Phase.RUNNING):
        assert Phase.STOPPING in MOVES[phase]  # and a stop can always be asked


def test_the_policy_applies_only_to_supervised_runs() -> None:
    """BACKOFF and GAVE_UP follow only a run that reached RUNNING or a restart by the policy; an
    awaited start that fails goes back to its caller (EXITED), not into a restart loop."""
    for old, new in itertools.product(Phase, (Phase.BACKOFF, Phase.GAVE_UP)):
        if new in MOVES[old]:
            assert old in (Phase.RUNNING, Phase.RESTARTING), (old, new)
    assert MOVES[Phase.STARTING] & AFTER_POLICY == {Phase.EXITED}


def test_only_a_ready_daemon_is_running() -> None:
    assert [old for old in Phase if Phase.RUNNING in MOVES[old]] == [Phase.STARTING, Phase.RESTARTING]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.STOPPING, Phase.RUNNING),
        (Phase.STOPPING, Phase.BACKOFF),
        (Phase.STOPPED, Phase.RUNNING),
        (Phase.RUNNING, Phase.STARTING),
        (Phase.STARTING, Phase.BACKOFF),
        (Phase.GAVE_UP, Phase.RESTARTING),
    ],
)
def test_a_move_the_table_lacks_is_refused(old: Phase, new: Phase) -> None:
    with pytest.raises(RuntimeError, match=f"no move from {old.value} to {new.value}"):
        check_move("web", old, new)


def test_staying_is_not_a_move() -> None:
    for phase in Phase:
        check_move("web", phase, phase)


def test_escalation_with_time_to_spare_gives_each_step_its_timeout() -> None:
    term_at, kill_at = escalation(now=100.0, deadline=200.0, stop_timeout=10.0, term_timeout=5.0)
    assert (term_at, kill_at) == (110.0, 115.0)


@pytest.mark.parametrize(
    ("budget", "stop_timeout", "term_timeout"),
    [
        (1.0, 10.0, 5.0),
        (3.0, 2.0, 5.0),
        (0.0, 10.0, 5.0),
        (0.1, 0.0, 0.0),
        (7.0, 5.0, 5.0),
        (30.0, 1.0, 60.0),
    ],
)
def test_escalation_never_passes_the_deadline(
    budget: float, stop_timeout: float, term_timeout: float
) -> None:
    now = 1000.0
    term_at, kill_at = escalation(now, now + budget, stop_timeout, term_timeout)
    assert now <= term_at <= kill_at <= now + budget
    assert term_at <= now + stop_timeout  # stop() never gets more than its own timeout
    assert kill_at - term_at <= term_timeout
    assert kill_at - term_at >= min(term_timeout, budget / 2) - 1e-9
