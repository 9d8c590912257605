"""Children die with the manager's process, even when it is SIGKILLed; signals drive run()."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import descendants, pid_alive

import procman

TESTS = Path(__file__).parent
ROOT = TESTS.parent

HOST = textwrap.dedent(
    """
    import os, sys, threading, time
    sys.path.insert(0, {tests!r})
    import procman
    from daemons import Quick, Stubborn

    class Spawner:
        # A daemon that itself starts a grandchild (the process group must take it down too).
        def __init__(self, name):
            self.name = name
        def start(self):
            import subprocess
            self.p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            print("grandchild", self.p.pid, flush=True)
        def stop(self):
            self.p.terminate()

    if __name__ == "__main__":
        m = procman.Manager(start_method=sys.argv[1], on_event=None)
        m.register(Quick("one"))
        m.register(Stubborn("two"))
        m.register(procman.CommandDaemon("three", [sys.executable, "-c", "import time; time.sleep(3600)"]))
        m.register(Spawner("four"))
        m.start(timeout=60)
        pids = [s.pid for s in m.status().values()]
        print("PIDS", *pids, flush=True)
        time.sleep(3600)
    """
)


def _read_pids(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("PIDS"):
            return [int(p) for p in line.split()[1:]]
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the host never reported its daemons' pids")


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_sigkill_of_the_manager_leaves_no_child_alive(method: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST.format(tests=str(TESTS)))
    # TMPDIR: a SIGKILLed host cannot remove multiprocessing's temporary directory; keep it in tmp_path
    proc = subprocess.Popen(
        [sys.executable, str(script), method],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        pids = _read_pids(proc)
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)
        family = (set(pids) | descendants(pids)) - {proc.pid}
        assert len(family) > 4  # the command's program and the grandchild are in there too
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in family):
            time.sleep(0.02)
        alive = [p for p in family if pid_alive(p)]
        assert not alive, f"still alive one second after the manager was killed: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in descendants([proc.pid]):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


RUNNER = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {tests!r})
    import procman
    from daemons import Quick, Stubborn

    def say(*parts):  # one write per line: print() writes text and newline apart, and threads interleave
        sys.stdout.write(" ".join(map(str, parts)) + "\\n")
        sys.stdout.flush()

    if __name__ == "__main__":
        m = procman.Manager(on_event=lambda e: say("EVENT", e.name, e.kind.value))
        m.register(Quick("calm"))
        if sys.argv[1] == "stubborn":
            m.register(Stubborn("stubborn"), stop_timeout=60, term_timeout=60)
        started = threading.Event()
        threading.Thread(target=lambda: started.wait(60) and say("READY"), daemon=True).start()
        import signal
        mine = lambda signum, frame: None
        signal.signal(signal.SIGTERM, mine)
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        report = procman.run_until_signal(m, stop_timeout=60, started=started)
        after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        say("RESTORED", before == after and after[1] is mine)
        say("REPORT", sorted((n, o.value) for n, o in report.outcomes.items()))
        m.close()
        sys.exit(0 if report.clean else 1)
    """
)


class Runner:
    """The runner script as a subprocess; its stdout lines read by a thread, waited on with bounds."""

    def __init__(self, tmp_path: Path, mode: str) -> None:
        script = tmp_path / "runner.py"
        script.write_text(RUNNER.format(tests=str(TESTS)))
        self.proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_line("READY")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, text: str, timeout: float = 30) -> None:
        # "in" a line, not the whole line: print() writes its text and its newline separately, so
        # a daemon's line written by the manager's output thread may land between the two.
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"the runner never printed {text!r}: {self.seen}")
            self.seen.append(line)

    def finish(self, timeout: float = 30) -> str:
        """Wait for the exit; everything it printed."""
        self.proc.wait(timeout)
        self.reader.join(10)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "\n".join(self.seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_run_until_signal_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "calm")
    try:
        runner.proc.send_signal(signal.SIGTERM)
        out = runner.finish()
        assert runner.proc.returncode == 0
        assert "REPORT [('calm', 'stopped')]" in out
        assert "RESTORED True" in out  # the host's own handlers are back
    finally:
        runner.close()


def test_second_signal_kills_at_once(tmp_path: Path) -> None:
    runner = Runner(tmp_path, "stubborn")
    try:
        runner.proc.send_signal(signal.SIGINT)
        runner.wait_line("EVENT calm stopped")  # the graceful stop is under way (stubborn ignores it)
        runner.proc.send_signal(signal.SIGINT)
        out = runner.finish()
        assert runner.proc.returncode == 1
        assert "('stubborn', 'killed')" in out and "('calm', 'stopped')" in out
    finally:
        runner.close()


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_child_holds_only_the_read_end_of_its_control_pipe(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Else it would never see end of file on the pipe when the manager dies."""
    import logging

    from daemons import PipeProbe

    caplog.set_level(logging.INFO)
    with procman.Manager(start_method=method, on_event=None) as m:
        m.register(PipeProbe("probe"))
        m.start(timeout=30)
    assert "control pipe ends held: 1" in [r.getMessage() for r in caplog.records]
