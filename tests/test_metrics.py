"""Metrics of daemons and jobs, read from the parent, checked by prometheus_client's own parser."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemons import Hog, SignalNoter
from helpers import wait_until
from jobs import add, boom
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import procman
import workers


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an OpenMetrics text, parsed by prometheus_client (which rejects bad text)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_daemon_metrics_match_the_status_and_follow_restarts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with procman.Manager() as m:
        m.register(procman.CommandDaemon("sleeper", ["sleep", "60"]), restart="on-failure")
        m.register(Hog(40), restart="never")
        m.start()
        registry.register(procman.ManagerCollector(m))
        generate_latest(registry)  # a first look: CPU is counted from here
        first_pid = m.status()["sleeper"].pid
        m.signal("sleeper", "TERM")  # to the program: it dies by SIGTERM, the policy restarts it
        wait_until(
            lambda: (
                m.status()["sleeper"].pid not in (None, first_pid)
                and m.status()["sleeper"].state is procman.DaemonState.RUNNING
            ),
            what="sleeper restarted",
        )
        m.restart("sleeper")
        found = samples(generate_latest(registry).decode())
        status = m.status()
    assert value(found, "procman_daemon_up", daemon="sleeper") == 1
    assert value(found, "procman_daemon_state", daemon="sleeper", state="running") == 1
    assert value(found, "procman_daemon_state", daemon="sleeper", state="exited") == 0
    assert value(found, "procman_daemon_restarts_total", daemon="sleeper", reason="signal") == 1
    assert value(found, "procman_daemon_restarts_total", daemon="sleeper", reason="requested") == 1
    assert status["sleeper"].restarts_by_reason == {"signal": 1, "requested": 1}
    assert value(found, "procman_daemon_last_exit_code", daemon="sleeper") == status["sleeper"].last_exit.code
    assert value(found, "procman_daemon_start_time_seconds", daemon="sleeper") == pytest.approx(
        status["sleeper"].started, abs=0.01
    )
    # the hog's 40 MB are counted in its process group (the guard and a command's shim are in
    # each, pages they share with procman counted in each: RSS, summed)
    hog = value(found, "procman_daemon_memory_rss_bytes", daemon="hog")
    assert hog > value(found, "procman_daemon_memory_rss_bytes", daemon="sleeper") + 30 * 1024 * 1024
    assert value(found, "procman_daemon_cpu_seconds_total", daemon="hog") > 0
    # no pid anywhere: names are the labels
    assert not any("pid" in dict(labels) for _, labels in found)


def test_signal_reaches_a_python_daemon_and_bad_signals_are_refused(tmp_path: Path) -> None:
    noted = tmp_path / "signals"
    with procman.Manager() as m:
        m.register(SignalNoter(str(noted)))
        m.start()
        pid = m.signal("noter", "usr1")
        assert pid == m.status()["noter"].pid
        m.signal("noter", signal.SIGHUP)
        wait_until(lambda: noted.exists() and len(noted.read_text().split()) == 2, what="two signals noted")
        # both arrived (the kernel delivers pending signals lowest number first, not in send order)
        wanted = [str(int(signal.SIGUSR1)), str(int(signal.SIGHUP))]
        assert sorted(noted.read_text().split()) == sorted(wanted)
        # again and again: each reaches the daemon's handler, the main thread asleep in its wait
        # or not (sent to the process, the kernel may hand one to another thread, which runs no
        # Python handler; it went missing so under load)
        for k in range(2, 12):
            m.signal("noter", "USR1")
            m.signal("noter", "HUP")
            wait_until(lambda k=k: len(noted.read_text().split()) == 2 * k, what=f"signal pair {k} noted")
        with pytest.raises(procman.DaemonError, match="unknown signal 'SIGNOPE'"):
            m.signal("noter", "SIGNOPE")
        with pytest.raises(procman.DaemonError, match="not a signal number"):
            m.signal("noter", 999)
        with pytest.raises(procman.DaemonError, match="no daemon named 'nope'"):
            m.signal("nope", "HUP")
        m.stop_daemon("noter")
        with pytest.raises(procman.StateError, match="no process to signal"):
            m.signal("noter", "HUP")
        assert m.status()["noter"].state is procman.DaemonState.STOPPED


def test_pool_metrics_count_runs_by_outcome(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with workers.Pool(2) as pool:
        registry.register(workers.PoolCollector(pool))
        for i in range(20):
            assert pool.submit(add, i, 1).result(timeout=30) == i + 1
        with pytest.raises(KeyError):
            pool.submit(boom).result(timeout=30)
        sched = pool.schedule(add, every=3600, args=(1, 2), name="hourly")
        found = samples(generate_latest(registry).decode())
        stats = pool.stats()
        next_run = sched.next_run_time
    assert value(found, "workers_job_runs_total", job="add", outcome="ok") == 20
    assert value(found, "workers_job_runs_total", job="boom", outcome="error") == 1
    assert value(found, "workers_job_duration_seconds_count", job="add") == 20
    assert value(found, "workers_job_lateness_seconds_count", job="add") == 20
    assert value(found, "workers_job_duration_seconds_bucket", job="add", le="+Inf") == 20
    assert value(found, "workers_job_runs_total", job="hourly", outcome="missed") == 0
    assert next_run is not None
    assert value(found, "workers_job_next_run_timestamp_seconds", job="hourly") == pytest.approx(
        next_run.timestamp(), abs=0.01
    )
    assert value(found, "workers_pool_workers") == stats.workers == 2
    assert value(found, "workers_pool_worker_restarts_total") == stats.worker_restarts


def test_collectors_refuse_what_they_cannot_read() -> None:
    with pytest.raises(TypeError, match=r"takes a workers\.Pool"):
        workers.PoolCollector(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes a procman\.Manager"):
        procman.ManagerCollector(object())


def test_openmetrics_text_escapes_labels() -> None:
    fam = procman._proc.metrics.Family("x_up", "gauge", 'a "help"\nline')  # type: ignore[attr-defined]
    fam.add({"daemon": 'we"ird\\name\n'}, 1)
    text = procman.openmetrics([fam])
    assert text.endswith("# EOF\n")
    assert value(samples(text), "x_up", daemon='we"ird\\name\n') == 1


def test_start_retries_retry_a_failed_first_start_with_backoff(tmp_path: Path) -> None:
    from daemons import FlakyStart

    events: list[procman.Event] = []
    fast = procman.RestartPolicy(backoff_initial=0.05, backoff_factor=2.0, jitter=0.0)
    with procman.Manager(on_event=events.append) as m:
        m.register(FlakyStart(str(tmp_path / "a"), failures=2), start_retries=2, restart=fast)
        m.start(timeout=30)
        assert m.status()["flaky"].state is procman.DaemonState.RUNNING
    backoffs = [e for e in events if e.kind is procman.EventKind.BACKING_OFF]
    assert [e.delay for e in backoffs] == [0.05, 0.1]  # the policy's backoff, growing
    assert "attempt 2 of 3" in backoffs[0].reason and "ConnectionError" in backoffs[0].reason
    assert (tmp_path / "a").read_text().count("attempt") == 3

    # one retry is not enough for two failures: the start fails with the last error, nothing runs
    with procman.Manager() as m:
        m.register(FlakyStart(str(tmp_path / "b"), failures=2), start_retries=1, restart=fast)
        with pytest.raises(procman.StartError, match="attempt 2"):
            m.start(timeout=30)
        assert m.status()["flaky"].pid is None
    with pytest.raises(procman.DaemonError, match="start_retries=-1"):
        procman.check_daemon(FlakyStart("x", 0), start_retries=-1)
