"""The procman command, driven as a subprocess the way a user drives it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import pid_alive

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


def run_procman(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One procman command to its end (bounded), its output captured."""
    return subprocess.run(  # noqa: PLW1510 - the exit status is what the tests check
        [sys.executable, "-m", "procman", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=cwd,
        timeout=60,
    )


class Procman:
    """``procman run FILE`` in a subprocess, its output collected line by line.

    With ``sock=None`` procman picks its socket itself and the control commands find it by ``-c``.
    """

    def __init__(
        self, config: Path, sock: Path | None, env: dict[str, str] | None = None, *, new_group: bool = False
    ) -> None:
        self.config = config
        self.sock = sock
        self.env = env or _env()
        where = ["--socket", str(sock)] if sock is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procman", "run", str(config), *where],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            text=True,
            start_new_session=new_group,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        rx = re.compile(pattern)
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(bool(rx.search(x)) for x in self.lines) >= count, timeout)
            if not ok:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines)
                )
            return [x for x in self.lines if rx.search(x)][count - 1]

    def index(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self.cond:
            for i, line in enumerate(self.lines):
                if rx.search(line):
                    return i
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        where = ["--socket", str(self.sock)] if self.sock is not None else ["-c", str(self.config)]
        return run_procman(*args, *where, env=self.env)

    def status(self, code: int | None = None) -> dict[str, Any]:
        """``procman status --json``: it exits 0 when every daemon runs, 3 when one does not.

        ``code`` is the exit status expected; ``None`` takes either (a daemon may be restarting).
        """
        out = self.ctl("status", "--json")
        expected = (0, 3) if code is None else (code,)
        assert out.returncode in expected, (out.returncode, out.stdout, out.stderr)
        data: dict[str, Any] = orjson.loads(out.stdout)
        return data

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def procman_run(tmp_path: Path) -> Iterator[Any]:
    started: list[Procman] = []

    def start(text: str, env: dict[str, str] | None = None) -> Procman:
        config = tmp_path / "app.toml"
        config.write_text(text)
        p = Procman(config, tmp_path / "ctl.sock", env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def _daemon(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in status["daemons"] if d["name"] == name)


READY = r"procman +\| .*ready.*Ctrl-C"

APP = """
[procman]
stop_timeout = 10

[daemons.alpha]
factory = "cli_app:SlowReady"
kwargs = { delay = 0.4 }
restart = "always"

[daemons.beta]
factory = "cli_app:Quick"
depends_on = ["alpha"]

[jobs.sq]
function = "cli_app:square"
args = [7]
every = "0.3s"
"""


def test_run_status_restart_logs_stop_and_sigterm(procman_run: Any) -> None:
    p = procman_run(APP)
    p.wait_line(READY)
    assert stat.S_IMODE(p.sock.stat().st_mode) == 0o600
    p.wait_line(r"sq +\| run ok .*: 49")
    st = p.status(0)
    alpha, beta = _daemon(st, "alpha"), _daemon(st, "beta")
    assert (alpha["state"], beta["state"]) == ("running", "running")
    assert pid_alive(alpha["pid"]) and pid_alive(beta["pid"])
    (job,) = st["jobs"]
    assert job["name"] == "sq" and job["runs"] >= 1 and job["last_result"] == "49" and job["next_run"]
    table = p.ctl("status")
    assert table.returncode == 0 and re.search(r"alpha +daemon +running", table.stdout), table.stdout

    # restart: a new process, ready again; the old one is gone
    out = p.ctl("restart", "alpha")
    assert out.returncode == 0, out.stderr
    assert "restarted" in out.stdout
    new_alpha = _daemon(p.status(0), "alpha")
    assert new_alpha["state"] == "running" and new_alpha["pid"] != alpha["pid"]
    assert not pid_alive(alpha["pid"])

    logs = p.ctl("logs", "alpha", "-n", "50")
    assert logs.returncode == 0 and logs.stdout.count("slow-up pid=") == 2, logs.stdout

    # stop one daemon: it stays stopped, the others run on (and status says so: exit 3)
    out = p.ctl("stop", "beta")
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    st = p.status(3)
    assert _daemon(st, "beta")["state"] == "stopped" and _daemon(st, "alpha")["state"] == "running"
    assert not pid_alive(beta["pid"])

    # unknown names are refused, naming what exists
    bad = p.ctl("restart", "gamma")
    assert bad.returncode == 1 and "no daemon named 'gamma'" in bad.stderr and "alpha" in bad.stderr

    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0
    assert "all stopped cleanly" in p.lines[-1]
    assert not p.sock.exists()
    assert not pid_alive(new_alpha["pid"])


@pytest.mark.parametrize("where", ["address", "local cluster"])
def test_run_puts_the_jobs_on_dask_when_the_pool_says_so(
    procman_run: Any, dask_address: str | None, where: str
) -> None:
    if dask_address is None:
        pytest.skip("the Dask backend's tests need Dask distributed: pip install -e '.[test]'")
    address = f'address = "{dask_address}"\n' if where == "address" else "workers = 1\n"
    job = '[jobs.sq]\nfunction = "cli_app:square"\nargs = [7]\nevery = "0.3s"\n'
    p = procman_run(f'[pool]\nbackend = "dask"\n{address}{job}')
    p.wait_line(r"procman +\| connecting to Dask")
    p.wait_line(READY)
    p.wait_line(r"sq +\| run ok .*: 49")
    (job,) = p.status(0)["jobs"]
    assert job["runs"] >= 1 and job["last_result"] == "49"
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0
    assert "all stopped cleanly" in p.lines[-1]


def test_depends_on_starts_after_ready_and_stops_before(procman_run: Any) -> None:
    p = procman_run(APP)
    p.wait_line(READY)
    alpha_ready = p.index(r"alpha +\| ready")
    beta_starting = p.index(r"beta +\| starting")
    assert alpha_ready < beta_starting  # beta starts only once alpha is ready (0.4 s)
    up = float(p.wait_line(r"alpha +\| slow-up").split("at=")[1])
    beta_up = float(p.wait_line(r"beta +\| up").split("at=")[1])
    assert beta_up > up
    p.proc.send_signal(signal.SIGINT)
    assert p.wait_exit() == 0
    assert p.index(r"beta +\| stopped") < p.index(r"alpha +\| stopping pid")  # reverse order


def test_control_stop_ends_the_run(procman_run: Any) -> None:
    p = procman_run(APP)
    p.wait_line(READY)
    out = p.ctl("stop")
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    assert p.wait_exit() == 0


def test_second_signal_kills_at_once(procman_run: Any) -> None:
    p = procman_run(
        """
[procman]
stop_timeout = 60

[daemons.stubborn]
factory = "cli_app:Stubborn"
stop_timeout = 60
term_timeout = 60
"""
    )
    p.wait_line(READY)
    pid = _daemon(p.status(), "stubborn")["pid"]
    p.proc.send_signal(signal.SIGINT)
    p.wait_line(r"not stopping")
    time.sleep(0.1)  # a second Ctrl-C comes from a hand: one within 50 ms is the same signal again
    t = time.monotonic()
    p.proc.send_signal(signal.SIGINT)
    assert p.wait_exit(timeout=20) == 1  # not a clean stop
    assert time.monotonic() - t < 15  # far below the 60 s graceful deadline
    assert any("killing every daemon" in line for line in p.lines)
    assert not pid_alive(pid)


def test_one_signal_delivered_twice_is_one_graceful_stop(procman_run: Any) -> None:
    """What `timeout` does (the process, then its group): SIGINT twice, 5 ms apart, is one stop."""
    p = procman_run('[daemons.web]\nfactory = "cli_app:Quick"\n')
    p.wait_line(READY)
    p.proc.send_signal(signal.SIGINT)
    time.sleep(0.005)
    p.proc.send_signal(signal.SIGINT)
    assert p.wait_exit() == 0, "\n".join(p.lines)
    assert not any("killing every daemon" in line for line in p.lines), p.lines
    assert any(re.search(r"web +\| stopped \(stopped\)", line) for line in p.lines), p.lines


@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils timeout is not installed")
def test_timeout_stops_procman_gracefully(tmp_path: Path) -> None:
    """`timeout -s INT 4 procman run ...` (a cron line, a CI step): timeout signals procman and then
    its whole process group, so procman gets SIGINT twice within a millisecond. That is one stop,
    a graceful one, not the "second Ctrl-C" that kills everything."""
    config = tmp_path / "app.toml"
    config.write_text('[daemons.web]\nfactory = "cli_app:Quick"\n')
    done = subprocess.run(
        ["timeout", "-s", "INT", "4", sys.executable, "-m", "procman", "run", str(config),
         "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, env=_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 124, done.stdout  # timeout's own status: it had to send the signal
    assert "all stopped cleanly" in done.stdout, done.stdout
    assert "killing every daemon" not in done.stdout
    assert re.search(r"web +\| stopped \(stopped\)", done.stdout), done.stdout  # its stop() ran


def test_systemd_ready_notification(procman_run: Any, tmp_path: Path) -> None:
    addr = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(addr))
    sock.settimeout(20)
    try:
        p = procman_run(APP, env=_env(NOTIFY_SOCKET=str(addr)))
        msg = sock.recv(4096).decode()
        assert msg.startswith("READY=1")
        # sent once every daemon was ready, with the line that says so
        p.wait_line(READY)
        assert p.index(r"alpha +\| ready") < p.index(r"beta +\| ready") < p.index(READY)
        p.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode().startswith("STOPPING=1")
        assert p.wait_exit() == 0
    finally:
        sock.close()


def test_control_commands_without_a_running_procman(tmp_path: Path) -> None:
    out = run_procman("status", "--socket", str(tmp_path / "none.sock"))
    assert out.returncode == 2 and "no procman is running" in out.stderr


def test_a_second_procman_on_the_same_socket_is_refused(procman_run: Any, tmp_path: Path) -> None:
    p = procman_run(APP)
    p.wait_line(READY)
    other = run_procman("run", str(tmp_path / "app.toml"), "--socket", str(p.sock))
    assert other.returncode == 2 and "another procman is running" in other.stdout
    assert "starting" not in other.stdout
    assert p.status()["daemons"]  # the first one is untouched
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0


# -- bad config files: each a precise error, nothing started ------------------------------------

BAD = [
    ("not toml", "[daemons.a\nfactory = 1", ["not valid TOML", "line 1"]),
    ("empty", "", ["nothing to run"]),
    (
        "unknown key",
        '[daemons.a]\nfactory = "cli_app:Quick"\nrestrat = "always"\n',
        ["[daemons.a] restrat", "did you mean 'restart'"],
    ),
    (
        "bad restart",
        '[daemons.a]\nfactory = "cli_app:Quick"\nrestart = "sometimes"\n',
        ["[daemons.a] restart", "found 'sometimes'", "'always', 'on-failure', 'never'"],
    ),
    ("bad name", '[daemons.Web_1]\nfactory = "cli_app:Quick"\n', ["[daemons.Web_1]", "not a valid name"]),
    (
        "both",
        '[daemons.a]\nfactory = "cli_app:Quick"\ncommand = ["true"]\n',
        ["[daemons.a]", "exactly one of factory"],
    ),
    (
        "no module",
        '[daemons.a]\nfactory = "no_such_mod:X"\n',
        ["[daemons.a] factory", "cannot import module 'no_such_mod'"],
    ),
    (
        "no attr",
        '[daemons.a]\nfactory = "cli_app:Nope"\n',
        ["[daemons.a] factory", "has no attribute 'Nope'"],
    ),
    (
        "bad ref",
        '[daemons.a]\nfactory = "cli_app.Quick"\n',
        ["[daemons.a] factory", "found 'cli_app.Quick'", "package.module:attribute"],
    ),
    (
        "factory raises",
        '[daemons.a]\nfactory = "cli_app:SlowReady"\nkwargs = { nope = 1 }\n',
        ["[daemons.a] factory", "TypeError"],
    ),
    (
        "not a daemon",
        '[daemons.a]\nfactory = "cli_app:square"\nargs = [2]\n',
        ["[daemons.a] factory", "lacks start() and stop()"],
    ),
    (
        "negative timeout",
        '[daemons.a]\nfactory = "cli_app:Quick"\nstop_timeout = -1\n',
        ["[daemons.a] stop_timeout", "found -1", "seconds"],
    ),
    (
        "bad duration",
        '[daemons.a]\nfactory = "cli_app:Quick"\nwatchdog = "soon"\n',
        ["[daemons.a] watchdog", "found 'soon'"],
    ),
    (
        "env not str",
        '[daemons.a]\ncommand = ["true"]\nenv = { PORT = 8080 }\n',
        ["[daemons.a] env.PORT", "found 8080", "a string"],
    ),
    (
        "missing cwd",
        '[daemons.a]\ncommand = ["true"]\ncwd = "no/such/dir"\n',
        ["[daemons.a] cwd", "a directory"],
    ),
    (
        "unknown dep",
        '[daemons.a]\nfactory = "cli_app:Quick"\ndepends_on = ["b"]\n',
        ["[daemons.a] depends_on", "found 'b'"],
    ),
    (
        "cycle",
        '[daemons.a]\nfactory = "cli_app:Quick"\ndepends_on = ["b"]\n'
        '[daemons.b]\nfactory = "cli_app:Quick"\ndepends_on = ["a"]\n',
        ["depends_on", "cycle a -> b -> a"],
    ),
    (
        "backoff key",
        '[daemons.a]\nfactory = "cli_app:Quick"\nbackoff = { intial = 1 }\n',
        ["[daemons.a.backoff] intial", "did you mean 'initial'"],
    ),
    (
        "pool size",
        '[pool]\nworkers = 0\n[jobs.j]\nfunction = "cli_app:square"\nargs = [1]\nevery = 1\n',
        ["[pool] workers", "found 0", ">= 1"],
    ),
    (
        "no trigger",
        '[jobs.j]\nfunction = "cli_app:square"\nargs = [1]\n',
        ["[jobs.j]", "exactly one of every", "found none"],
    ),
    (
        "two triggers",
        '[jobs.j]\nfunction = "cli_app:square"\nevery = 1\ncron = "* * * * *"\n',
        ["[jobs.j]", "found every and cron"],
    ),
    (
        "bad cron",
        '[jobs.j]\nfunction = "cli_app:square"\ncron = "61 * * * *"\n',
        ["[jobs.j] cron", "minute 61 is out of range 0-59"],
    ),
    (
        "bad tz",
        '[jobs.j]\nfunction = "cli_app:square"\ncron = "* * * * *"\ntimezone = "Mars/Base"\n',
        ["[jobs.j] timezone", "Mars/Base"],
    ),
    (
        "past at",
        '[jobs.j]\nfunction = "cli_app:square"\nat = 2001-01-01T00:00:00Z\n',
        ["[jobs.j] at", "in the future"],
    ),
    (
        "not callable",
        '[jobs.j]\nfunction = "cli_app:NOT_CALLABLE"\nevery = 1\n',
        ["[jobs.j] function", "a callable"],
    ),
    (
        "bad overlap",
        '[jobs.j]\nfunction = "cli_app:square"\nevery = 1\noverlap = "wait"\n',
        ["[jobs.j] overlap", "found 'wait'", "'skip', 'queue'"],
    ),
    (
        "same name",
        '[daemons.x]\nfactory = "cli_app:Quick"\n[jobs.x]\nfunction = "cli_app:square"\nevery = 1\n',
        ["[jobs.x]", "already used by [daemons.x]"],
    ),
    (
        "unknown section",
        '[daemon.a]\nfactory = "cli_app:Quick"\n',
        ["[top level] daemon", "did you mean 'daemons'"],
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_before_anything_starts(
    case: str, text: str, expected: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    for command in ("check", "run"):
        socket_args = ["--socket", str(tmp_path / "s.sock")] if command == "run" else []
        out = run_procman(command, str(config), *socket_args)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert str(config) in out.stderr
        for phrase in expected:
            assert phrase in out.stderr, (phrase, out.stderr)
        assert "starting" not in out.stdout and not (tmp_path / "s.sock").exists()


def test_missing_file_is_named(tmp_path: Path) -> None:
    out = run_procman("run", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "nope.toml: no such file" in out.stderr


def test_commands_failures_and_give_ups_are_visible(procman_run: Any, tmp_path: Path) -> None:
    script = "import os, time; print('hello', os.environ['GREETING']); time.sleep(60)"
    p = procman_run(
        f"""
[daemons.echo]
command = ["{sys.executable}", "-u", "-c", "{script}"]
env = {{ GREETING = "from env" }}

[daemons.crasher]
factory = "cli_app:Crasher"
restart = "always"
max_restarts = 1
within = 60
backoff = {{ initial = 0.1 }}

[jobs.bad]
function = "cli_app:fails"
every = "0.2s"
"""
    )
    p.wait_line(READY)
    p.wait_line(r"echo +\| hello from env")
    p.wait_line(r"bad +\| run failed in .*ValueError: job failed on purpose")
    p.wait_line(r"crasher +\| exited EXIT\(1\): RuntimeError: crashed on purpose")
    p.wait_line(r"crasher +\| GAVE UP: .*procman restart crasher")
    st = p.status(3)
    assert _daemon(st, "crasher")["state"] == "gave-up"
    assert _daemon(st, "crasher")["last_exit"]["error"] == "RuntimeError: crashed on purpose"
    (job,) = st["jobs"]
    assert job["failures"] >= 1 and job["last_error"] == "ValueError: job failed on purpose"
    assert not any("\033[" in line for line in p.lines)  # not a terminal: no colour codes
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0


def test_colour_per_name_on_a_terminal() -> None:
    import io

    from procman.cli.console import Console

    out = io.StringIO()
    console = Console(["web", "db"], out, color=True)
    console.line("web", "hello")
    console.line("db", "hi")
    console.line("web", "oops", "error")
    console.close()
    web, db, err = out.getvalue().splitlines()
    assert "\033[36mweb" in web and "\033[33mdb " in db  # a colour each
    assert "\033[1;31moops" in err
    plain = io.StringIO()
    console = Console(["web"], plain, color=False)
    console.line("web", "hello")
    console.close()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} web     \| hello\n", plain.getvalue())


def test_a_failed_start_stops_the_rest_and_exits_1(procman_run: Any) -> None:
    p = procman_run(
        """
[daemons.ok]
factory = "cli_app:Quick"

[daemons.broken]
factory = "cli_app:FailsToStart"
"""
    )
    assert p.wait_exit() == 1
    p.wait_line(r"broken +\| failed to start: ConnectionRefusedError: database at db:5432 refused")
    ok_pid = int(p.wait_line(r"ok +\| starting \(pid").split("pid ")[1].split(")")[0])
    assert not pid_alive(ok_pid)  # all or nothing: the daemon that started was stopped again
    assert not p.sock.exists()


def test_control_commands_find_the_socket_from_the_config(procman_run: Any, tmp_path: Path) -> None:
    text = APP.replace("[procman]\n", '[procman]\nsocket = "app.sock"\n')
    config = tmp_path / "app.toml"
    config.write_text(text)
    p = Procman(config, tmp_path / "app.sock")
    try:
        p.wait_line(READY)
        out = run_procman("status", "-c", str(config))
        assert out.returncode == 0 and "alpha" in out.stdout, out.stderr
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait_exit() == 0
    finally:
        p.close()


def test_sigterm_to_the_whole_process_group_is_a_graceful_stop(tmp_path: Path) -> None:
    # `timeout`, `kill -- -PGID` or a shell signal the whole group: the forkserver in it must not
    # die (its children would die with it, by their parent-death signal) before procman stops them.
    config = tmp_path / "app.toml"
    config.write_text(APP)
    p = Procman(config, tmp_path / "ctl.sock", new_group=True)
    try:
        p.wait_line(READY)
        pids = {d["name"]: d["pid"] for d in p.status()["daemons"]}
        os.killpg(p.proc.pid, signal.SIGTERM)
        assert p.wait_exit() == 0
        text = "\n".join(p.lines)
        assert "alpha          | stopped (stopped)" in text or re.search(
            r"alpha +\| stopped \(stopped\)", text
        )
        assert re.search(r"beta +\| stopped \(stopped\)", text)
        assert "restart #" not in text  # nothing died under it and came back
        assert not any(pid_alive(pid) for pid in pids.values())
    finally:
        p.close()


def test_a_store_keeps_the_jobs_across_procman_runs(procman_run: Any, tmp_path: Path) -> None:
    at = datetime.fromtimestamp(time.time() + 3.0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = f"""
[store]
url = "sqlite:///jobs.db"
poll = 0.1

[jobs.once]
function = "cli_app:square"
args = [4]
at = {at}

[jobs.often]
function = "cli_app:square"
args = [3]
every = "0.2s"
"""
    first = procman_run(text)
    first.wait_line(READY)
    first.wait_line(r"once +\| run ok: 16", timeout=30)
    first.wait_line(r"often +\| run ok.*: 9")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert (tmp_path / "jobs.db").exists()  # relative to the config file
    second = procman_run(text)
    second.wait_line(READY)
    second.wait_line(r"once +\| its time has passed: not added to the store again")
    second.wait_line(r"often +\| run ok.*: 9")
    time.sleep(0.5)
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    assert not [x for x in second.lines if "run ok: 16" in x]  # the one-off job ran once, in all
    con = sqlite3.connect(tmp_path / "jobs.db")
    try:
        [(state, runs)] = con.execute("SELECT state, runs FROM procworks_schedules").fetchall()
        assert state == "active" and runs >= 2  # kept across the restart, not cancelled at exit
    finally:
        con.close()
