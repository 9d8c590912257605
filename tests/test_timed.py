"""The timed queue, pure: order by due time, submission order among equals, nothing early."""

from __future__ import annotations

import random

from workers._timed import TimedQueue


def test_items_come_out_earliest_first_and_only_once_due() -> None:
    q: TimedQueue[str] = TimedQueue()
    for due, name in [(5.0, "e"), (1.0, "a"), (3.0, "c"), (2.0, "b"), (4.0, "d")]:
        q.push(due, name)
    assert q.earliest() == 1.0
    assert list(q.pop_due(0.999)) == []  # nothing before its time
    assert list(q.pop_due(3.0)) == ["a", "b", "c"]  # due at the instant counts as due
    assert q.earliest() == 4.0 and len(q) == 2
    assert list(q.pop_due(10.0)) == ["d", "e"]
    assert q.earliest() is None and len(q) == 0


def test_equal_due_times_keep_submission_order() -> None:
    q: TimedQueue[int] = TimedQueue()
    for i in range(100):
        q.push(7.0, i)
    assert list(q.pop_due(7.0)) == list(range(100))


def test_push_says_whether_the_timer_must_move_up() -> None:
    q: TimedQueue[str] = TimedQueue()
    assert q.push(5.0, "first") is True
    assert q.push(6.0, "later") is False
    assert q.push(5.0, "same time, after") is False
    assert q.push(1.0, "sooner") is True


def test_random_order_in_sorted_order_out() -> None:
    rng = random.Random(7)
    q: TimedQueue[tuple[float, int]] = TimedQueue()
    entries = [(rng.choice([0.5, 1.0, 1.5, 2.0]), i) for i in range(1000)]
    for due, i in entries:
        q.push(due, (due, i))
    out = list(q.pop_due(2.0))
    assert out == sorted(entries)  # by due time, then by the order pushed (i grows with it)


def test_items_and_clear() -> None:
    q: TimedQueue[str] = TimedQueue()
    q.push(1.0, "x")
    q.push(2.0, "y")
    assert sorted(q.items()) == ["x", "y"]
    q.clear()
    assert q.items() == [] and q.earliest() is None


def test_next_due_is_earliest_as_an_attribute() -> None:
    q: TimedQueue[int] = TimedQueue()
    assert q.next_due == float("inf")
    rng = random.Random(3)
    for i in range(200):
        q.push(rng.random(), i)
        assert q.next_due == q.earliest()
    for now in (0.25, 0.5, 0.75):
        for _ in q.pop_due(now):
            assert q.next_due == (q.earliest() if len(q) else float("inf"))
        assert q.next_due == q.earliest() and q.next_due > now
    q.clear()
    assert q.next_due == float("inf")
