"""The procman command from a shell: sockets per config file, status exit codes, --version, --help,
and the traceback of a failed job run. Real processes, driven the way a user drives them."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from test_cli import READY, Procman, _env, run_procman

from procman._errors import RemoteTraceback
from procman.cli.console import Console, traceback_lines
from procman.cli.main import _parser, version_line

Start = Callable[[Path, str], Procman]


@pytest.fixture
def runtime() -> Iterator[dict[str, str]]:
    """The environment of a user whose $XDG_RUNTIME_DIR is a fresh (short) directory of its own."""
    d = tempfile.mkdtemp(prefix="pmrt-")  # short: a socket path must fit in 107 bytes
    try:
        yield _env(XDG_RUNTIME_DIR=d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start(runtime: dict[str, str]) -> Iterator[Start]:
    """``procman run FILE`` with no --socket: the control commands find it by ``-c FILE``."""
    started: list[Procman] = []

    def run(config: Path, text: str) -> Procman:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
        p = Procman(config, None, runtime)
        started.append(p)
        return p

    yield run
    for p in started:
        p.close()


def _stop_all(p: Procman) -> None:
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0


# -- one socket per config file ---------------------------------------------------------------------

ONE = """
[daemons.web]
factory = "cli_app:Quick"
"""

TWO = """
[daemons.db]
factory = "cli_app:Quick"

[daemons.cache]
factory = "cli_app:Quick"
"""


def _rows(table: str) -> set[str]:
    """The names in the first column of a status table."""
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z0-9-]*) +(?:daemon|job) ", table, re.M)}


def test_two_projects_each_with_an_app_toml(tmp_path: Path, runtime: dict[str, str], start: Start) -> None:
    one, two = tmp_path / "one" / "app.toml", tmp_path / "two" / "app.toml"
    p1, p2 = start(one, ONE), start(two, TWO)
    p1.wait_line(READY)
    p2.wait_line(READY)

    # each `status -c` finds the procman of that very file, and shows the file's full path
    s1 = run_procman("status", "-c", str(one), env=runtime)
    s2 = run_procman("status", "-c", str(two), env=runtime)
    assert s1.returncode == 0, s1.stderr
    assert s2.returncode == 0, s2.stderr
    assert _rows(s1.stdout) == {"web"}, s1.stdout
    assert _rows(s2.stdout) == {"db", "cache"}, s2.stdout
    assert f"config {one.resolve()}\n" in s1.stdout
    assert f"config {two.resolve()}\n" in s2.stdout

    # a relative -c from the project's directory finds the same one
    rel = run_procman("status", "-c", "app.toml", env=runtime, cwd=two.parent)
    assert rel.returncode == 0 and _rows(rel.stdout) == {"db", "cache"}, rel.stdout + rel.stderr

    # the sockets: STEM-HASH.sock in $XDG_RUNTIME_DIR/procman, HASH from the file's absolute path
    j1 = orjson.loads(run_procman("status", "--json", "-c", str(one), env=runtime).stdout)
    j2 = orjson.loads(run_procman("status", "--json", "-c", str(two), env=runtime).stdout)
    assert (j1["config"], j2["config"]) == (str(one.resolve()), str(two.resolve()))
    for j, path in ((j1, one), (j2, two)):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        assert j["socket"] == str(Path(runtime["XDG_RUNTIME_DIR"]) / "procman" / f"app-{digest}.sock")
        assert Path(j["socket"]).exists()
    assert j1["socket"] != j2["socket"]
    assert f"socket {j1['socket']}\n" in s1.stdout

    # restart and logs with -c reach the right one too
    out = run_procman("restart", "web", "-c", str(one), env=runtime)
    assert out.returncode == 0 and "web: restarted" in out.stdout, out.stderr
    wrong = run_procman("restart", "web", "-c", str(two), env=runtime)
    assert wrong.returncode == 1 and "no daemon named 'web'" in wrong.stderr
    logs = run_procman("logs", "db", "-c", str(two), env=runtime)
    assert logs.returncode == 0 and "up pid=" in logs.stdout, logs.stderr

    # with two running, a bare `procman status` asks which one
    bare = run_procman("status", env=runtime)
    assert bare.returncode == 2 and "several procman instances" in bare.stderr, bare.stderr

    # stopping one by its file leaves the other running
    out = run_procman("stop", "-c", str(one), env=runtime)
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    assert p1.wait_exit() == 0
    s2 = run_procman("status", "-c", str(two), env=runtime)
    assert s2.returncode == 0 and _rows(s2.stdout) == {"db", "cache"}, s2.stderr
    gone = run_procman("status", "-c", str(one), env=runtime)
    assert gone.returncode == 2 and "no procman is running" in gone.stderr
    # ... and now the only one running needs no -c
    bare = run_procman("status", env=runtime)
    assert bare.returncode == 0 and _rows(bare.stdout) == {"db", "cache"}, bare.stderr
    _stop_all(p2)


def test_the_config_socket_key_and_socket_option_still_win(
    tmp_path: Path, runtime: dict[str, str], start: Start
) -> None:
    config = tmp_path / "app.toml"
    p = start(config, '[procman]\nsocket = "ctl.sock"\n' + ONE)
    p.wait_line(READY)
    assert (tmp_path / "ctl.sock").exists()
    for where in (["-c", str(config)], ["--socket", str(tmp_path / "ctl.sock")]):
        out = run_procman("status", *where, env=runtime)
        assert out.returncode == 0 and _rows(out.stdout) == {"web"}, out.stderr
        assert f"socket {tmp_path / 'ctl.sock'}\n" in out.stdout
    _stop_all(p)


def test_a_long_config_name_still_gets_a_socket_that_fits(
    tmp_path: Path, runtime: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from procman.cli.control import SUN_PATH_MAX, default_socket

    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime["XDG_RUNTIME_DIR"])
    long = tmp_path / ("x" * 150 + ".toml")
    path = default_socket(long)
    assert len(bytes(path)) <= SUN_PATH_MAX
    digest = hashlib.sha256(str(long).encode()).hexdigest()[:10]
    assert re.fullmatch(rf"x+-{digest}\.sock", path.name), path
    assert path.parent == Path(runtime["XDG_RUNTIME_DIR"]) / "procman"
    # a runtime directory so deep that no stem fits: the hash alone
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert default_socket(long).name == f"{digest}.sock"


# -- status exit codes ------------------------------------------------------------------------------

PAIR = """
[daemons.alpha]
factory = "cli_app:Quick"

[daemons.beta]
factory = "cli_app:Quick"

[jobs.sq]
function = "cli_app:square"
args = [3]
every = "0.5s"
"""


def test_status_exits_3_while_a_daemon_is_stopped(tmp_path: Path, start: Start) -> None:
    p = start(tmp_path / "app.toml", PAIR)
    p.wait_line(READY)
    out = p.ctl("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not running" not in out.stdout
    assert p.status(0)["daemons"]

    out = p.ctl("stop", "beta")
    assert out.returncode == 0 and "beta: stopped" in out.stdout, out.stderr
    out = p.ctl("status")
    assert out.returncode == 3, out.stdout + out.stderr
    assert re.search(r"^beta +daemon +stopped", out.stdout, re.M), out.stdout
    assert "not running: beta (stopped)" in out.stdout
    st = p.status(3)  # --json too
    assert {d["name"]: d["state"] for d in st["daemons"]} == {"alpha": "running", "beta": "stopped"}

    # one name: only its row, and only its state counts
    one = p.ctl("status", "alpha")
    assert one.returncode == 0 and _rows(one.stdout) == {"alpha"}, one.stdout
    one = p.ctl("status", "beta")
    assert one.returncode == 3 and _rows(one.stdout) == {"beta"}, one.stdout
    job = p.ctl("status", "sq", "--json")
    assert job.returncode == 0, job.stderr
    assert [j["name"] for j in orjson.loads(job.stdout)["jobs"]] == ["sq"]
    bad = p.ctl("status", "gamma")
    assert bad.returncode == 1 and "no daemon or job named 'gamma'" in bad.stderr and "alpha" in bad.stderr

    out = p.ctl("restart", "beta")
    assert out.returncode == 0, out.stderr
    out = p.ctl("status")
    assert out.returncode == 0 and "not running" not in out.stdout, out.stdout
    _stop_all(p)


def test_status_exits_3_for_a_daemon_that_gave_up(tmp_path: Path, start: Start) -> None:
    p = start(
        tmp_path / "app.toml",
        """
[daemons.steady]
factory = "cli_app:Quick"

[daemons.crasher]
factory = "cli_app:Crasher"
restart = "always"
max_restarts = 1
within = 60
backoff = { initial = 0.1 }
""",
    )
    p.wait_line(READY)
    p.wait_line(r"crasher +\| GAVE UP")
    out = p.ctl("status")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "not running: crasher (gave-up)" in out.stdout
    assert _daemon_state(p.status(3), "crasher") == "gave-up"
    assert p.ctl("status", "steady").returncode == 0
    _stop_all(p)


def _daemon_state(status: dict[str, object], name: str) -> str:
    daemons = status["daemons"]
    assert isinstance(daemons, list)
    return str(next(d["state"] for d in daemons if d["name"] == name))


def test_status_without_a_procman_is_2(tmp_path: Path, runtime: dict[str, str]) -> None:
    config = tmp_path / "app.toml"
    config.write_text(ONE)
    out = run_procman("status", "-c", str(config), env=runtime)
    assert out.returncode == 2 and "no procman is running" in out.stderr


# -- --version and --help ---------------------------------------------------------------------------


def test_version() -> None:
    out = run_procman("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"procman (procworks) {importlib.metadata.version('procworks')}\n"


def test_version_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import procman

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert version_line().startswith(f"procman (procworks) {procman.__version__} (not installed")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_command_and_argument_has_help() -> None:
    commands = _subcommands()
    assert set(commands) >= {"run", "check", "status", "restart", "stop", "logs"}
    top = run_procman("--help")
    assert top.returncode == 0
    assert "--version" in top.stdout and "STEM-HASH.sock" in top.stdout
    for name, parser in commands.items():
        out = run_procman(name, "--help")
        assert out.returncode == 0, out.stderr
        shown = _flat(out.stdout)
        assert parser.description and _flat(parser.description)[:60] in shown, name
        assert re.search(rf"^    {name} +\S", top.stdout, re.M), (name, top.stdout)  # listed, with help
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            assert _flat(action.help) in shown, (name, action.dest, out.stdout)
            for opt in action.option_strings:
                assert opt in out.stdout, (name, opt)
    status = _flat(run_procman("status", "--help").stdout)
    assert "exit status: 0 every daemon (or NAME) is running" in status
    assert "3 a daemon is not running" in status and "procman stop NAME" in status
    assert "exit status:" in run_procman("run", "--help").stdout


# -- a failed job run shows its traceback -----------------------------------------------------------


def test_a_failed_run_shows_the_workers_traceback(tmp_path: Path, start: Start) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=5)).isoformat(timespec="milliseconds")
    p = start(
        tmp_path / "app.toml",
        f"""
[jobs.bad]
function = "cli_app:lookup"
every = "0.3s"

[jobs.once]
function = "cli_app:lookup"
at = {at}
""",
    )
    p.wait_line(READY)
    for job, summary in (
        ("bad", r"run failed in \S+: KeyError: 'missing-key'"),
        ("once", r"run failed: KeyError"),
    ):
        p.wait_line(rf"{job} +\| looking up missing-key$")  # what the job printed, under its name
        p.wait_line(rf"{job} +\| {summary}")
        p.wait_line(rf"{job} +\| KeyError: 'missing-key'$")
        with p.cond:
            mine = [x.split("| ", 1)[1] for x in p.lines if re.match(rf"\S+ {job} +\| ", x)]
        first = next(i for i, x in enumerate(mine) if x.startswith("run failed"))
        tb = mine[first + 1 : first + 1 + mine[first + 1 :].index("KeyError: 'missing-key'") + 1]
        assert tb[0] == "Traceback (most recent call last):", mine
        assert any(re.match(r'  File ".*cli_app\.py", line \d+, in lookup$', x) for x in tb), tb
        assert "    return _settings()[key]" in tb, tb

    logs = p.ctl("logs", "bad", "-n", "1000")
    assert logs.returncode == 0, logs.stderr
    text = logs.stdout
    assert "run failed in" in text and "Traceback (most recent call last):" in text
    assert re.search(r'  File ".*cli_app\.py", line \d+, in lookup\n', text), text
    assert "KeyError: 'missing-key'\n" in text
    assert "looking up missing-key\n" in text
    once = p.ctl("logs", "once")
    assert "Traceback (most recent call last):" in once.stdout and "in lookup" in once.stdout
    _stop_all(p)


def test_a_long_traceback_is_cut_in_the_middle() -> None:
    exc = ValueError("deep")
    exc.__cause__ = RemoteTraceback("".join(f"line {i}\n" for i in range(1000)))
    lines = traceback_lines(exc, limit=50)
    assert len(lines) == 50
    assert lines[0] == "line 0" and lines[-1] == "line 999"
    assert any("lines left out" in x for x in lines)
    assert traceback_lines(ValueError("local")) == []  # raised here: the message says it all
    assert traceback_lines(None) == []


def test_a_multi_line_error_stays_under_the_name() -> None:
    import io

    out = io.StringIO()
    console = Console(["job"], out)
    err = RuntimeError("first\nsecond")
    err.__cause__ = RemoteTraceback("Traceback (most recent call last):\nRuntimeError: first\nsecond\n")
    console.run_failed("job", err, " in 1s")
    console.close()
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\S+ job     \| ", x) for x in lines), lines
    assert [x.split("| ", 1)[1] for x in lines] == [
        "run failed in 1s: RuntimeError: first",
        "second",
        "Traceback (most recent call last):",
        "RuntimeError: first",
        "second",
    ]
    kept = console.lines_of("job", 10) or []  # what `procman logs job` shows: the same lines
    assert [x.split(" ", 1)[1] for x in kept] == [x.split("| ", 1)[1] for x in lines]
