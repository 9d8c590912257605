"""Schedule input is checked at the earliest point: ``Pool.schedule`` at call time, a config file by
``procman check``, with one reader of ``every`` and one checker of ``cron`` behind both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import jobs
import pytest
from helpers import Events

import workers
from procman.cli.config import load
from procman.cli.main import main as procman_main
from procman.cli.tables import ConfigError
from workers import PoolEventKind

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def pool(events: Events) -> Iterator[workers.Pool]:
    p = workers.Pool(1, on_event=events)
    try:
        yield p
    finally:
        p.shutdown(wait=True, cancel_futures=True, timeout=10)


# -- Pool.schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("1d", 86400.0), (timedelta(minutes=2), 120.0), (90, 90.0)],
)
def test_schedule_every_takes_the_config_files_forms(pool: workers.Pool, every: Any, seconds: float) -> None:
    before = time.time()
    sched = pool.schedule(jobs.now, every=every, name="string-every")
    after = time.time()
    nxt = sched.next_run_time
    assert nxt is not None
    # the first run is one interval from now
    assert before + seconds - 1 <= nxt.timestamp() <= after + seconds + 1
    sched.cancel()


BAD_EVERY = ["5x", "5", "-5s", "0s", "", "5 minutes", 0, -1, timedelta(0), True]


@pytest.mark.parametrize("every", BAD_EVERY, ids=[repr(b) for b in BAD_EVERY])
def test_schedule_refuses_a_bad_every_at_call_time(pool: workers.Pool, every: Any) -> None:
    with pytest.raises(workers.ScheduleError) as info:
        pool.schedule(jobs.now, every=every)
    message = str(info.value)
    assert message.startswith(f"every={every!r} ")
    assert "'30s', '5m', '1h30m', '2h', '1d' or '500ms'" in message
    assert isinstance(info.value, ValueError)


BAD_CRON = [
    (
        "0 0 2 * * *",
        "cron '0 0 2 * * *' has 6 fields; use five: minute hour day-of-month month day-of-week "
        "(seconds are not supported)",
    ),
    ("61 2 * * *", "cron '61 2 * * *': minute 61 is out of range 0-59"),
    ("x 2 * * *", "cron 'x 2 * * *': minute 'x' is not a number"),
    ("*/0 * * * *", "minute step 0 in '*/0' must be 1 or more"),
    ("0 0 * * 8", "day-of-week 8 is out of range 0-7 or sun-sat"),
]


@pytest.mark.parametrize(("cron", "message"), BAD_CRON, ids=[c for c, _ in BAD_CRON])
def test_schedule_refuses_a_bad_cron_at_call_time(pool: workers.Pool, cron: str, message: str) -> None:
    with pytest.raises(workers.ScheduleError) as info:
        pool.schedule(jobs.now, cron=cron)
    assert message in str(info.value)


def test_a_refused_schedule_leaves_nothing_behind(pool: workers.Pool, events: Events) -> None:
    good = pool.schedule(jobs.now, every=0.05, name="good")
    for kwargs in ({"cron": "0 0 2 * * *"}, {"cron": "61 2 * * *"}, {"every": "soon"}, {"every": 0}):
        with pytest.raises(workers.ScheduleError):
            pool.schedule(jobs.now, name="refused", **kwargs)
    # the good schedule keeps running beside the refusals, and nothing of theirs ever ran
    events.wait(lambda items: sum(e.name == "good" and e.kind is PoolEventKind.RUN_DONE for e in items) >= 3)
    assert "refused" not in events.names()
    assert good.state is workers.ScheduleState.ACTIVE
    assert pool.submit(jobs.add, 2, 3).result(30) == 5
    good.cancel()


def test_schedule_accepts_croniters_aliases(pool: workers.Pool) -> None:
    sched = pool.schedule(jobs.now, cron="@daily", tz="UTC")
    nxt = sched.next_run_time
    assert nxt is not None
    midnight = nxt.astimezone(UTC)
    assert (midnight.hour, midnight.minute, midnight.second) == (0, 0, 0)
    assert 0 < nxt.timestamp() - time.time() <= 86400
    sched.cancel()


# -- the config file -------------------------------------------------------------------------------


def _config(tmp_path: Path, job: str) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(f'[jobs.j]\nfunction = "cli_app:square"\nargs = [3]\n{job}\n')
    return path


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ('every = "5m"', 300.0),
        ('every = "1h30m"', 5400.0),
        ('every = "1d"', 86400.0),
        ('every = "500ms"', 0.5),
        ("every = 2.5", 2.5),
    ],
)
def test_config_every_uses_the_same_reader(tmp_path: Path, line: str, seconds: float) -> None:
    cfg = load(_config(tmp_path, line))
    assert cfg.jobs[0].every == pytest.approx(seconds)


def test_config_cron_alias_and_five_fields_are_accepted(tmp_path: Path) -> None:
    assert load(_config(tmp_path, 'cron = "@hourly"')).jobs[0].cron == "@hourly"
    assert load(_config(tmp_path, 'cron = "0 2 * * mon-fri"')).jobs[0].cron == "0 2 * * mon-fri"


CONFIG_ERRORS = [
    (
        'cron = "0 0 2 * * *"',
        "[jobs.j] cron: '0 0 2 * * *' has 6 fields; use five: minute hour day-of-month month "
        "day-of-week (seconds are not supported)",
    ),
    ('cron = "61 2 * * *"', "[jobs.j] cron: '61 2 * * *': minute 61 is out of range 0-59"),
    ('cron = "0 0 * jan-x *"', "[jobs.j] cron: '0 0 * jan-x *': month 'x' is not a number or a month name"),
    (
        'cron = "* * * * *"\ntimezone = "Mars/Base"',
        "[jobs.j] timezone: timezone = 'Mars/Base' is not a known time zone",
    ),
    ('every = "5x"', "[jobs.j] every: found '5x', expected a number of seconds > 0 (e.g. 10, 2.5, \"30s\""),
    ('every = "0s"', "[jobs.j] every: found '0s', expected a number of seconds > 0"),
    ("every = -1", "[jobs.j] every: found -1, expected a number of seconds > 0"),
]


@pytest.mark.parametrize(("line", "message"), CONFIG_ERRORS, ids=[c for c, _ in CONFIG_ERRORS])
def test_procman_check_reports_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = _config(tmp_path, line)
    with pytest.raises(ConfigError):
        load(path)
    assert procman_main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"procman: {path}: {message}"), err
    assert err.count("\n") == 1, err


def test_procman_check_command(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "procman", "check", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    bad = _config(tmp_path, 'cron = "0 0 2 * * *"')
    out = check(bad)
    assert out.returncode == 2, out
    assert f"{bad}: [jobs.j] cron: '0 0 2 * * *' has 6 fields; use five" in out.stderr
    good = tmp_path / "good.toml"
    good.write_text('[jobs.j]\nfunction = "cli_app:square"\nargs = [3]\nevery = "5m"\n')
    out = check(good)
    assert out.returncode == 0, out
    assert "ok: 0 daemon(s), 1 job(s)" in out.stdout
