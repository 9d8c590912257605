"""Contract tests of procman.Manager on real child processes."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from daemons import (
    AsyncTicker,
    Beating,
    Crasher,
    FailStart,
    LastWords,
    Quick,
    Rendezvous,
    Stubborn,
    WithSocket,
    pull,
)
from helpers import Recorder, pid_alive, wait_until

import procman
from procman import DaemonState, EventKind, RestartPolicy, StopOutcome

METHODS = ["forkserver", "fork", "spawn"]
FAST = RestartPolicy(restart="always", backoff_initial=0.01, max_restarts=3, within=60)


@pytest.mark.parametrize("method", METHODS)
def test_ten_slow_starts_run_concurrently(method: str, tmp_path: Path, recorder: Recorder) -> None:
    lines: list[str] = []
    with procman.Manager(
        start_method=method, on_event=recorder, output=lambda name, stream, line: lines.append(line)
    ) as m:
        for i in range(10):
            m.register(Rendezvous(f"slow-{i}", str(tmp_path), 10))
        m.start(timeout=60)
        status = m.status()
        assert all(s.state is DaemonState.RUNNING for s in status.values())
        assert len({s.pid for s in status.values()}) == 10
    # Every start() returned only once all ten had begun: they overlapped rather than queued.
    # (a rendezvous proves it without a wall-clock bound, which a busy machine would break)
    assert sorted(lines) == sorted(f"met slow-{i} 10" for i in range(10))


def test_failing_start_stops_the_others_and_reports_the_traceback(recorder: Recorder) -> None:
    with procman.Manager(on_event=recorder) as m:
        for i in range(3):
            m.register(Quick(f"ok-{i}", delay=0.2))
        m.register(FailStart("bad-config"))
        with pytest.raises(procman.StartError) as info:
            m.start(timeout=30)
        err = info.value
        assert list(err.failures) == ["bad-config"]
        exc = err.failures["bad-config"]
        assert isinstance(exc, ValueError)
        assert str(exc) == "bad config for bad-config"
        assert isinstance(exc.__cause__, procman.RemoteTraceback)
        assert "raise ValueError" in exc.__cause__.tb
        assert "bad-config" in str(err) and "ValueError" in str(err)
        pids = [e.pid for e in recorder.of(EventKind.STARTED) if e.pid]
        assert len(pids) == 4
        assert not any(pid_alive(p) for p in pids)
        assert not m.running
        assert all(s.pid is None for s in m.status().values())
        # The manager is still usable once the bad daemon is removed.
        m.remove("bad-config")
        m.start(timeout=30)
        assert {s.state for s in m.status().values()} == {DaemonState.RUNNING}


def test_start_deadline_names_the_late_daemon() -> None:
    with procman.Manager(on_event=None) as m:
        m.register(Quick("fast"))
        m.register(Quick("too-slow", delay=30))
        with pytest.raises(procman.StartError) as info:
            m.start(timeout=0.5)
        assert list(info.value.failures) == ["too-slow"]
        assert isinstance(info.value.failures["too-slow"], TimeoutError)
        assert all(s.pid is None for s in m.status().values())


CRASHES = [
    ("exception", 1, None, RuntimeError),
    ("exit", 3, None, None),
    ("sigkill", -9, "SIGKILL", None),
    ("segfault", -11, "SIGSEGV", None),
]


@pytest.mark.parametrize(("mode", "code", "sig", "error"), CRASHES, ids=[c[0] for c in CRASHES])
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_crash_is_restarted_and_decoded(
    method: str,
    mode: str,
    code: int,
    sig: str | None,
    error: type[BaseException] | None,
    tmp_path: Path,
    recorder: Recorder,
) -> None:
    trigger = str(tmp_path / "crash.sock")
    with procman.Manager(start_method=method, on_event=recorder) as m:
        m.register(Crasher("consumer", mode, marker=str(tmp_path / "crashed"), trigger=trigger), restart=FAST)
        m.start(timeout=30)  # returns once it is READY: only then may it crash
        pull(trigger)
        recorder.wait_kind(EventKind.READY, "consumer", count=2)
        st = m.status()["consumer"]
        assert st.state is DaemonState.RUNNING
        assert st.restarts == 1
        assert st.last_exit is not None
        assert st.last_exit.code == code
        assert st.last_exit.signal == sig
        assert st.last_exit.reason == procman.describe_exit(code)
        if error is None:
            assert st.last_exit.error is None
        else:
            assert isinstance(st.last_exit.error, error)
            assert "consumer blew up" in str(st.last_exit.error)
        exited = recorder.of(EventKind.EXITED, "consumer")
        assert exited[0].exit_code == code
        assert m.stop(timeout=10).clean


def test_forked_daemon_exits_while_a_host_thread_is_inside_a_log_handler() -> None:
    """A host thread writing a log record at the fork holds its stream's buffer lock in the child
    too (logging re-creates only the handler's own lock there). The child must not flush that
    stream when it exits: it would wait for the lock forever, and its stop() time out."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    stream = open(w, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.stuck-handler")
    logger.propagate = False
    logger.addHandler(handler)
    # More than the pipe holds: the writer blocks inside the write, its stream's lock held.
    writer = threading.Thread(target=logger.error, args=("x" * (1 << 20),))
    writer.start()
    try:
        full = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
        wait_until(lambda: _unread(r) >= full, what="the log writer to block on the full pipe")
        with procman.Manager(start_method="fork", on_event=None) as m:
            m.register(Quick("quick"))
            m.start(timeout=30)
            assert m.stop(timeout=10).outcomes == {"quick": StopOutcome.STOPPED}
    finally:
        logger.removeHandler(handler)

        def drained() -> bool:
            with contextlib.suppress(BlockingIOError):
                while os.read(r, 1 << 16):
                    pass
            return not writer.is_alive()

        wait_until(drained, what="the log writer to finish")
        handler.close()
        stream.close()
        os.close(r)


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd``."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)


def test_external_sigkill_is_restarted(recorder: Recorder) -> None:
    with procman.Manager(on_event=recorder) as m:
        m.register(Quick("victim"), restart="on-failure")
        m.start(timeout=30)
        pid = m.status()["victim"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        recorder.wait_kind(EventKind.READY, "victim", count=2)
        st = m.status()["victim"]
        assert st.pid != pid and st.state is DaemonState.RUNNING
        assert st.last_exit is not None and st.last_exit.reason == "SIGKILL(-9)"


def test_crash_loop_gives_up_while_sibling_keeps_serving(recorder: Recorder, tmp_path: Path) -> None:
    trigger = str(tmp_path / "crash.sock")
    with procman.Manager(on_event=recorder) as m:
        m.register(Crasher("flaky", "exit", after=0.01, trigger=trigger), restart=FAST)
        m.register(Quick("steady"))
        m.start(timeout=30)  # the first crash only once it is READY; the restarts crash at once
        pull(trigger)
        steady_pid = m.status()["steady"].pid
        recorder.wait_kind(EventKind.GAVE_UP, "flaky")
        status = m.status()
        assert status["flaky"].state is DaemonState.GAVE_UP
        assert status["flaky"].restarts == 3
        assert status["flaky"].pid is None
        assert status["steady"].state is DaemonState.RUNNING
        assert status["steady"].pid == steady_pid
        assert len(recorder.of(EventKind.EXITED, "flaky")) == 4
        gave_up = recorder.of(EventKind.GAVE_UP, "flaky")[0]
        assert "max_restarts=3" in gave_up.reason
        # Backoff was applied after the first, immediate restart.
        assert [e.delay for e in recorder.of(EventKind.BACKING_OFF, "flaky")]


def test_a_crash_while_a_sibling_is_still_starting_is_restarted_by_policy(
    recorder: Recorder, tmp_path: Path
) -> None:
    trigger = str(tmp_path / "crash.sock")
    with procman.Manager(on_event=recorder) as m:
        m.register(Crasher("flaky", "exit", after=0.01, trigger=trigger), restart=FAST)
        m.register(Quick("slow", delay=1.0))  # flaky is ready, and crashes, while this one starts

        def crash_once_ready() -> None:
            recorder.wait_kind(EventKind.READY, "flaky")
            pull(trigger)

        crasher = threading.Thread(target=crash_once_ready)
        crasher.start()
        m.start(timeout=30)
        crasher.join(30)
        kinds = [(e.kind, e.name) for e in recorder.events]
        assert kinds.index((EventKind.EXITED, "flaky")) < kinds.index((EventKind.READY, "slow"))
        recorder.wait_kind(EventKind.GAVE_UP, "flaky")  # supervised: restarted, then gave up
        assert m.status()["flaky"].restarts == 3
        assert m.status()["slow"].state is DaemonState.RUNNING


def test_never_restart_leaves_daemon_exited(recorder: Recorder, tmp_path: Path) -> None:
    trigger = str(tmp_path / "crash.sock")
    with procman.Manager(on_event=recorder) as m:
        m.register(Crasher("once", "exit", trigger=trigger), restart="never")
        m.start(timeout=30)
        pull(trigger)
        recorder.wait_kind(EventKind.EXITED, "once")
        recorder.wait_for(lambda _: m.status()["once"].state is DaemonState.EXITED, timeout=5)
        assert m.status()["once"].restarts == 0


@pytest.mark.parametrize("method", METHODS)
def test_stubborn_daemon_is_killed_within_the_deadline(method: str, recorder: Recorder) -> None:
    with procman.Manager(start_method=method, on_event=recorder) as m:
        m.register(Stubborn("stubborn"), stop_timeout=10, term_timeout=10)
        m.register(Quick("polite"))
        m.start(timeout=30)
        pid = m.status()["stubborn"].pid
        t0 = time.monotonic()
        report = m.stop(timeout=1.0)
        elapsed = time.monotonic() - t0
        assert report.outcomes == {"stubborn": StopOutcome.KILLED, "polite": StopOutcome.STOPPED}
        assert not report.clean
        assert report.names(StopOutcome.KILLED) == ["stubborn"]
        # The daemon's own timeouts add up to 20 s: returning well before them means the call's
        # 1 s deadline is what ended the stop (a bound loose enough for any busy machine).
        assert elapsed < 10
        assert pid is not None and not pid_alive(pid)
        assert recorder.of(EventKind.STOP_TIMED_OUT, "stubborn")
        assert recorder.of(EventKind.KILLED, "stubborn")


def test_sigterm_phase_stops_a_daemon_whose_stop_hangs(recorder: Recorder) -> None:
    with procman.Manager(on_event=recorder) as m:
        m.register(Crasher("hangs-in-stop", "exit", after=3600), stop_timeout=0.2)
        m.start(timeout=30)
        report = m.stop(timeout=10)
        assert report.outcomes == {"hangs-in-stop": StopOutcome.STOPPED}


def test_second_stop_escalates_at_once(recorder: Recorder) -> None:
    import threading

    with procman.Manager(on_event=recorder) as m:
        m.register(Stubborn("stubborn"), stop_timeout=30, term_timeout=30)
        m.start(timeout=30)
        first: list[procman.StopReport] = []
        t = threading.Thread(target=lambda: first.append(m.stop(timeout=60)))
        t0 = time.monotonic()
        t.start()
        recorder.wait_for(lambda _: m.status()["stubborn"].state is DaemonState.STOPPING, 5)
        second = m.stop(timeout=60)
        t.join(10)
        assert time.monotonic() - t0 < 10
        assert first and first[0].outcomes["stubborn"] is StopOutcome.KILLED
        assert second.outcomes["stubborn"] is StopOutcome.KILLED


def test_last_line_before_crash_is_logged_before_the_exit(caplog_all: pytest.LogCaptureFixture) -> None:
    seen_at_exit: list[bool] = []
    rec = Recorder()

    def hook(event: procman.Event) -> None:
        if event.kind is EventKind.EXITED:
            seen_at_exit.append(any("famous last words" in r.getMessage() for r in caplog_all.records))
        rec(event)

    with procman.Manager(on_event=hook) as m:
        m.register(LastWords("doomed", "famous last words"), restart="never")
        m.start(timeout=30)
        rec.wait_kind(EventKind.EXITED, "doomed")
    assert seen_at_exit == [True]
    line = next(r for r in caplog_all.records if r.getMessage() == "famous last words")
    assert line.name == "procman.daemon.doomed"
    assert getattr(line, "daemon", None) == "doomed"
    assert m.status is not None


def test_async_daemon_runs_on_uvloop_and_is_restarted(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture, recorder: Recorder
) -> None:
    with procman.Manager(on_event=recorder) as m:
        m.register(AsyncTicker("ticker", crash_after=0.05, marker=str(tmp_path / "m")), restart=FAST)
        m.start(timeout=30)
        recorder.wait_kind(EventKind.READY, "ticker", count=2)
        st = m.status()["ticker"]
        assert st.restarts == 1
        assert st.last_exit is not None and isinstance(st.last_exit.error, RuntimeError)
        report = m.stop(timeout=10)
        assert report.clean
    messages = [r.getMessage() for r in caplog_all.records]
    assert "async started on uvloop" in messages
    assert "async stopped" in messages


def test_command_daemon_logs_restarts_and_stops(
    caplog_all: pytest.LogCaptureFixture, recorder: Recorder, tmp_path: Path
) -> None:
    script = "import sys, time; print('hello from cmd', flush=True); time.sleep(0.1); sys.exit(4)"
    serve = "import os, time; print('serving in', os.getcwd(), os.environ['X_TEST'], flush=1); time.sleep(99)"
    with procman.Manager(on_event=recorder) as m:
        m.register(procman.CommandDaemon("short-job", [sys.executable, "-c", script]), restart=FAST)
        m.register(
            procman.CommandDaemon(
                "server", [sys.executable, "-c", serve], env={"X_TEST": "42"}, cwd=tmp_path
            ),
        )
        m.start(timeout=30)
        recorder.wait_kind(EventKind.EXITED, "short-job", count=2)
        st = m.status()["short-job"]
        assert st.last_exit is not None and st.last_exit.code == 4
        recorder.wait_kind(EventKind.GAVE_UP, "short-job")
        report = m.stop(timeout=10)
        assert report.outcomes["server"] is StopOutcome.STOPPED
    messages = [r.getMessage() for r in caplog_all.records]
    assert "hello from cmd" in messages and f"serving in {tmp_path} 42" in messages


def test_command_daemon_killed_by_signal_is_decoded(recorder: Recorder) -> None:
    script = "import os, signal, time; time.sleep(0.05); os.kill(os.getpid(), signal.SIGSEGV)"
    with procman.Manager(on_event=recorder) as m:
        m.register(procman.CommandDaemon("segv", [sys.executable, "-c", script]), restart="never")
        m.start(timeout=30)
        recorder.wait_kind(EventKind.EXITED, "segv")
        assert recorder.of(EventKind.EXITED, "segv")[0].reason == "SIGSEGV(-11)"


def test_command_not_found_fails_start() -> None:
    with procman.Manager(on_event=None) as m:
        m.register(procman.CommandDaemon("missing", ["/nonexistent/program", "--flag"]))
        with pytest.raises(procman.StartError) as info:
            m.start(timeout=30)
        assert isinstance(info.value.failures["missing"], FileNotFoundError)


def test_watchdog_dumps_stacks_and_restarts(caplog_all: pytest.LogCaptureFixture, recorder: Recorder) -> None:
    with procman.Manager(on_event=recorder) as m:
        m.register(Beating("hangs", beats=5), watchdog=0.3, restart=FAST)
        m.start(timeout=30)
        recorder.wait_kind(EventKind.WATCHDOG, "hangs")
        recorder.wait_kind(EventKind.READY, "hangs", count=2)
        st = m.status()["hangs"]
        assert st.last_exit is not None and st.last_exit.signal == "SIGKILL"
        assert isinstance(st.last_exit.error, TimeoutError)
    dump = "\n".join(r.getMessage() for r in caplog_all.records if r.name == "procman.daemon.hangs")
    assert "_work" in dump  # the hung work loop's frame is in the stack dump


def test_register_while_running_starts_at_once_and_remove_stops(recorder: Recorder) -> None:
    with procman.Manager(on_event=recorder) as m:
        m.register(Quick("first"))
        m.start(timeout=30)
        m.register(Quick("late"))
        st = m.status()["late"]
        assert st.state is DaemonState.RUNNING and st.pid is not None
        with pytest.raises(procman.StartError):
            m.register(FailStart("late-bad"))
        assert "late-bad" not in m.status()
        assert m.remove("late") is StopOutcome.STOPPED
        assert not pid_alive(st.pid)
        assert set(m.status()) == {"first"}


def test_status_fields_and_context_manager_stop() -> None:
    with procman.Manager(on_event=None) as m:
        m.register(Quick("svc"))
        assert m.status()["svc"].state is DaemonState.STOPPED
        m.start(timeout=30)
        st = m.status()["svc"]
        assert st.pid is not None and st.uptime is not None and st.uptime >= 0
        assert st.restarts == 0 and st.last_exit is None
        pid = st.pid
    assert not pid_alive(pid)
    with pytest.raises(procman.ManagerClosed):
        m.status()


_sockets: list[WithSocket] = []


def _with_socket() -> WithSocket:
    d = WithSocket("socketed")
    _sockets.append(d)
    return d


@pytest.fixture(autouse=True)
def _close_sockets() -> object:
    yield
    while _sockets:
        _sockets.pop().sock.close()


BAD_INPUT = [
    ("invalid-name", lambda: Quick("Bad_Name"), {}, "invalid daemon name 'Bad_Name'"),
    ("not-a-daemon", object, {}, "is not a daemon"),
    ("a-class", lambda: Quick, {}, "not a daemon object"),
    ("unpicklable", _with_socket, {}, "cannot be sent to a child process"),
    ("negative-stop", lambda: Quick("neg"), {"stop_timeout": -1}, "stop_timeout=-1 must not be negative"),
    ("nan-start", lambda: Quick("nan"), {"start_timeout": float("nan")}, "start_timeout=nan"),
    ("bad-restart", lambda: Quick("rs"), {"restart": "sometimes"}, "restart='sometimes'"),
    ("bad-watchdog", lambda: Quick("wd"), {"watchdog": 0}, "watchdog=0 must be > 0"),
]


@pytest.mark.parametrize(("case", "make", "kwargs", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_rejected_at_register_and_nothing_else_is_affected(
    case: str, make: object, kwargs: dict[str, object], message: str
) -> None:
    with procman.Manager(on_event=None) as m:
        m.register(Quick("good"))
        m.start(timeout=30)
        pid = m.status()["good"].pid
        with pytest.raises(procman.DaemonError) as info:
            m.register(make(), **kwargs)  # type: ignore[operator]
        assert message in str(info.value)
        assert isinstance(info.value, ValueError)
        status = m.status()
        assert set(status) == {"good"}
        assert status["good"].pid == pid and status["good"].state is DaemonState.RUNNING


@pytest.mark.parametrize(("case", "make", "kwargs", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_check_daemon_refuses_what_register_refuses(
    case: str, make: object, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(procman.DaemonError) as info:
        procman.check_daemon(make(), **kwargs)  # type: ignore[operator]
    assert message in str(info.value)


def test_check_daemon_check_name_and_dependency_cycle_accept_what_is_right() -> None:
    assert procman.check_daemon(Quick("web"), restart="always", depends_on=["db"]) is None
    assert procman.check_name("kafka-consumer") == "kafka-consumer"
    with pytest.raises(procman.DaemonError, match="invalid daemon name 'Kafka'"):
        procman.check_name("Kafka")
    assert procman.dependency_cycle({"web": ["db"], "db": []}) == []
    assert procman.dependency_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert procman.dependency_cycle({"a": ["gone"]}) == []  # unknown names are not a cycle


PRELOAD_SCRIPT = """
import os, sys
import procman

class Report:
    name = "report"
    def start(self):
        print("loaded" if "fractions" in sys.modules else "not-loaded", flush=True)
    def stop(self):
        pass

lines = []
with procman.Manager(preload=sys.argv[1:], output=lambda n, s, line: lines.append(line), on_event=None) as m:
    m.register(Report())
    m.start(timeout=60)
    for _ in range(600):
        if lines:
            break
        import time; time.sleep(0.05)
print(lines[0] if lines else "no-line")
"""


def test_preload_has_the_forkserver_import_a_module_for_every_daemon(tmp_path: Path) -> None:
    script = tmp_path / "preload.py"
    script.write_text(PRELOAD_SCRIPT)
    import subprocess

    def run(*modules: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script), *modules], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert run() == "not-loaded"  # the control: nothing else imports fractions
    assert run("fractions") == "loaded"


@pytest.mark.parametrize(
    ("preload", "message"),
    [
        ("fractions", "must be a list of module names"),
        (["no_such_module_here"], "'no_such_module_here' cannot be found"),
        (["no_such_pkg.sub"], "'no_such_pkg.sub' cannot be found"),
        ([""], "must hold module names"),
        ([3], "must hold module names"),
    ],
)
def test_a_bad_preload_is_refused_at_construction(preload: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        procman.Manager(preload=preload, on_event=None)  # type: ignore[arg-type]


def test_duplicate_name_and_negative_call_timeouts() -> None:
    with procman.Manager(on_event=None) as m:
        m.register(Quick("dup"))
        with pytest.raises(procman.DaemonError, match="already registered"):
            m.register(Quick("dup"))
        with pytest.raises(procman.DaemonError, match="must not be negative"):
            m.start(timeout=-1)
        with pytest.raises(procman.DaemonError, match="must not be negative"):
            m.stop(timeout=-0.5)
        with pytest.raises(procman.DaemonError, match="no daemon named 'nope'"):
            m.remove("nope")
        m.start(timeout=30)
        assert m.status()["dup"].state is DaemonState.RUNNING
    with pytest.raises(ValueError, match="start_method='threads'"):
        procman.Manager(start_method="threads")


def test_start_twice_is_a_state_error() -> None:
    with procman.Manager(on_event=None) as m:
        m.register(Quick("once"))
        m.start(timeout=30)
        with pytest.raises(procman.StateError, match="already running"):
            m.start(timeout=30)
        assert m.stop(timeout=10).clean
        m.start(timeout=30)
        assert m.status()["once"].state is DaemonState.RUNNING


def test_async_manager_twin() -> None:
    import asyncio

    async def main() -> procman.StopReport | None:
        async with procman.AsyncManager(on_event=None) as m:
            await m.register(AsyncTicker("a-tick"))
            await m.register(Quick("a-quick"))
            await m.start(timeout=30)
            status = await m.status()
            assert {s.state for s in status.values()} == {DaemonState.RUNNING}
            report = await m.stop(timeout=10)
            assert report.clean
            assert await m.remove("a-quick") is StopOutcome.NOT_RUNNING
            return report

    report = asyncio.run(main())
    assert report is not None


def test_output_without_newlines_is_logged_in_bounded_pieces(caplog_all: pytest.LogCaptureFixture) -> None:
    from daemons import Chatty

    with procman.Manager(on_event=None) as m:
        m.register(Chatty("chatty"))
        m.start(timeout=30)
    lines = [r.getMessage() for r in caplog_all.records if r.name == "procman.daemon.chatty"]
    assert "end of chatter" in lines
    pieces = [ln for ln in lines if ln.startswith("x")]
    assert sum(len(p) for p in pieces) == 1_000_000
    assert max(len(p) for p in pieces) <= 65536 + 65536


def test_calls_return_after_the_hook_saw_the_events_they_caused() -> None:
    seen: list[tuple[str, EventKind]] = []

    def slow_hook(event: procman.Event) -> None:
        time.sleep(0.02)  # a hook that takes its time: the calls must still wait for it
        seen.append((event.name, event.kind))

    with procman.Manager(on_event=slow_hook) as m:
        for i in range(4):
            m.register(Quick(f"q{i}"))
        m.start(timeout=30)
        assert {n for n, k in seen if k is EventKind.READY} == {"q0", "q1", "q2", "q3"}
        m.stop(timeout=30)
        assert {n for n, k in seen if k is EventKind.STOPPED} == {"q0", "q1", "q2", "q3"}
