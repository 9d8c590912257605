"""Managing schedules and timed jobs of a pool without a store (the store's are in test_store.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import workers


def append_line(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


def fire_time() -> float | None:
    t = workers.scheduled_time()
    return None if t is None else t.timestamp()


def test_list_look_up_reschedule_and_run_now(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with workers.Pool(1, on_event=None) as pool:
        a = pool.schedule(append_line, every="1h", args=(str(out), "a"), name="a")
        pool.schedule(append_line, every="2h", args=(str(out), "b"), name="b")
        assert [s.name for s in pool.schedules()] == ["a", "b"]
        assert pool.get_schedule("b").name == "b"
        with pytest.raises(workers.ScheduleError, match="no schedule named 'c'"):
            pool.get_schedule("c")
        a.run_now()
        assert a.wait(1, 15)
        assert out.read_text() == "a\n"
        [run] = a.history()
        assert run.state == "done" and run.error is None and run.duration is not None
        before = a.next_run_time
        a.reschedule(every="3h")
        assert before is not None and a.next_run_time is not None
        assert a.next_run_time.timestamp() > time.time() + 2.9 * 3600
        a.pause()
        a.reschedule(every=0.05)  # a paused schedule stays paused
        time.sleep(0.2)
        assert a.runs == 1 and a.state is workers.ScheduleState.PAUSED
        a.cancel()
        assert [s.name for s in pool.schedules()] == ["b"]  # cancelled ones are not listed
        with pytest.raises(workers.ScheduleError, match="cancelled"):
            a.run_now()


def test_a_failed_run_is_in_the_history_as_text() -> None:
    with workers.Pool(1, on_event=None) as pool:
        s = pool.schedule(int, every="1h", args=("x",), name="bad")
        s.run_now()
        assert s.wait(1, 15)
        [run] = s.history()
        assert run.state == "failed"
        assert run.error is not None and run.error.startswith("ValueError: invalid literal")
        s.cancel()


def test_timed_jobs_cancel_reschedule_run_now() -> None:
    with workers.Pool(1, on_event=None) as pool:
        far = time.time() + 3600
        f1 = pool.submit_job(fire_time, at=far, name="one")
        f2 = pool.submit_job(fire_time, at=far + 1, name="two")
        f3 = pool.submit_job(fire_time, at=far + 2, name="three")
        assert [j.name for j in pool.timed_jobs()] == ["one", "two", "three"]
        [one] = pool.timed_jobs("one")
        assert abs(one.due.timestamp() - far) < 0.01
        one.cancel()
        assert f1.cancelled()
        [two] = pool.timed_jobs("two")
        soon = time.time() + 0.2
        two.reschedule(soon)
        assert f2.result(15) == pytest.approx(soon, abs=1e-5)  # it knows the time it was moved to
        [three] = pool.timed_jobs("three")
        three.run_now()
        assert f3.result(15) is not None
        assert pool.timed_jobs() == []
        with pytest.raises(workers.ScheduleError, match="not waiting any more"):
            three.run_now()


def test_scheduled_time_is_the_fire_time_in_a_job() -> None:
    with workers.Pool(1, on_event=None) as pool:
        assert pool.submit(fire_time).result(15) is None  # a plain submit has none
        at = time.time() + 0.1
        assert pool.submit_at(at, fire_time).result(15) == pytest.approx(at, abs=1e-5)
        s = pool.schedule(fire_time, every=0.05, start=time.time() + 0.1, name="t")
        assert s.wait(2, 15)
        s.cancel()
        start = s.trigger.start  # type: ignore[attr-defined]
        value = s.last_result
        assert value is not None
        k = round((value - start) / 0.05)
        assert k >= 1 and value == pytest.approx(start + k * 0.05, abs=1e-5)  # on the grid, not late
    assert fire_time() is None  # outside a worker
