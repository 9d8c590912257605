"""Children die with the manager's process, even when it is SIGKILLed; signals drive run()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
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

    if __name__ == "__main__":
        m = procman.Manager(on_event=None)
        m.register(Quick("calm"))
        if sys.argv[1] == "stubborn":
            m.register(Stubborn("stubborn"), stop_timeout=60, term_timeout=60)
        started = threading.Event()
        threading.Thread(target=lambda: started.wait(60) and print("READY", flush=True), daemon=True).start()
        import signal
        mine = lambda signum, frame: None
        signal.signal(signal.SIGTERM, mine)
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        report = procman.run_until_signal(m, stop_timeout=60, started=started)
        after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        print("RESTORED", before == after and after[1] is mine, flush=True)
        print("REPORT", sorted((n, o.value) for n, o in report.outcomes.items()), flush=True)
        m.close()
        sys.exit(0 if report.clean else 1)
    """
)


def _start_runner(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(TESTS)))
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the daemons' own prints come first ("calm | ..."): output is visible
        seen.append(line)
        if line.strip() == "READY":
            return proc
        if len(seen) > 100:
            break
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"the runner never printed READY: {seen}")


def test_run_until_signal_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    proc = _start_runner(tmp_path, "calm")
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "REPORT [('calm', 'stopped')]" in out
        assert "RESTORED True" in out  # the host's own handlers are back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_second_signal_kills_at_once(tmp_path: Path) -> None:
    proc = _start_runner(tmp_path, "stubborn")
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # let the graceful stop begin (the stubborn daemon ignores it)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "('stubborn', 'killed')" in out and "('calm', 'stopped')" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


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
