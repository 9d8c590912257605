"""Faults at procman's edges, each refused with one line that names what and says what to do:
config values that ``check`` used to accept and ``run`` then tripped over (or that raised a
traceback), obstacles on the control socket's path, a squatted ``/tmp/procman-UID``, malformed
control requests, and a console whose output nobody reads. Real processes, as a user drives them."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_cli import READY, Procman, _env, run_procman

from procman.cli.config import load
from procman.cli.console import QUEUE_BYTES, Console
from procman.cli.control import MAX_REQUEST
from procman.cli.main import main
from procman.cli.tables import ConfigError
from procman.cli.toml import MAX_NESTING

# -- config values: one line at `check` and at `run`, no traceback -----------------------------------

JOB = '[jobs.j]\nfunction = "cli_app:square"\nargs = [3]\n'
CRON = JOB + 'cron = "0 2 * * *"\n'
CMD = "[daemons.d]\n"
FACTORY = '[daemons.d]\nfactory = "cli_app:Quick"\n'
POOL = JOB + "every = 1\n[pool]\n"
YEARS = "years 1-9999 in UTC"

FAULTS: list[tuple[str, str, list[str]]] = [
    ("tz is a directory", CRON + 'timezone = "Europe"', ["[jobs.j] timezone", "'Europe' is not a known"]),
    ("tz too long", CRON + f'timezone = "{"A" * 300}"', ["[jobs.j] timezone", "is not a known time zone"]),
    ("at year 1 +01:00", JOB + "at = 0001-01-01T00:00:00+01:00", ["[jobs.j] at", YEARS]),
    ("at year 9999 -01:00", JOB + "at = 9999-12-31T23:59:59-01:00", ["[jobs.j] at", YEARS]),
    ("at string year 9999", JOB + 'at = "9999-12-31T23:59:59-01:00"', ["[jobs.j] at", YEARS]),
    (
        "3000-deep array",
        JOB.replace("args = [3]", "args = " + "[" * 3000 + "]" * 3000),
        ["line 3", "[jobs.j] args", f"nested more than {MAX_NESTING} levels"],
    ),
    (
        "100-deep array",
        JOB.replace("args = [3]", "args = " + "[" * 100 + "]" * 100) + "every = 1",
        ["[jobs.j] args", f"nested more than {MAX_NESTING} levels"],
    ),
    ("cron never fires", JOB + 'cron = "0 0 30 2 *"', ["[jobs.j] cron", "never occurs", "never run"]),
    ("every inf", JOB + "every = inf", ["[jobs.j] every", "found inf", "seconds > 0"]),
    ("every 1e308", JOB + "every = 1e308", ["[jobs.j] every", "at most 100 years"]),
    ("every 1e-10", JOB + "every = 1e-10", ["[jobs.j] every", "less than 0.001s"]),
    ("every 100us", JOB + 'every = "0.1ms"', ["[jobs.j] every", "less than 0.001s"]),
    ("every 200 years", JOB + 'every = "73000d"', ["[jobs.j] every", "at most 100 years"]),
    ("timeout 1e308", JOB + "every = 1\ntimeout = 1e308", ["[jobs.j] timeout", "at most 100 years"]),
    (
        "stop_timeout 1e300",
        "[procman]\nstop_timeout = 1e300\n" + FACTORY,
        ["[procman] stop_timeout", "at most 100 years"],
    ),
    ("memory 1e300", POOL + "max_memory_mb = 1e300", ["[pool] max_memory_mb", "found 1e+300"]),
    ("workers 1e6", POOL + "workers = 1000000", ["[pool] workers", "from 1 to 1024"]),
    (
        "dask recycling",
        POOL + 'backend = "dask"\nmax_tasks_per_worker = 5',
        ["[pool] max_tasks_per_worker", 'not supported with backend = "dask"', "a lifetime"],
    ),
    (
        "dask memory",
        POOL + 'backend = "dask"\nmax_memory_mb = 100',
        ["[pool] max_memory_mb", 'not supported with backend = "dask"', "memory_limit"],
    ),
    ("address, no dask", POOL + 'address = "tcp://h:1"', ["[pool] address", 'with backend = "dask"']),
    ("dask address", POOL + 'backend = "dask"\naddress = "h:1"', ["[pool] address", "not a scheduler"]),
    ("backend ray", POOL + 'backend = "ray"', ["[pool] backend", "'ray'"]),
    (
        "store mysql",
        '[store]\nurl = "mysql://h/db"\n' + JOB + "every = 1",
        ["[store] url", "unknown scheme 'mysql'"],
    ),
    ("store no url", "[store]\npoll = 1\n" + JOB + "every = 1", ["[store] url", "is missing"]),
    (
        "store lease",
        '[store]\nurl = "sqlite:///j.db"\nlease = 1\n' + JOB + "every = 1",
        ["[store] lease", "at least"],
    ),
    ("store typo", '[store]\nurl = "sqlite:///j.db"\npol = 1\n' + JOB + "every = 1", ["[store] pol", "poll"]),
    ("int over 64 bits", JOB + "every = 1\nretries = 99999999999999999999", ["[jobs.j] retries", "64-bit"]),
    ("int of 5000 digits", JOB + "every = 1\nretries = " + "9" * 5000, ["line 5", "64-bit"]),
    ("env name with =", CMD + 'command = ["true"]\nenv = { "A=B" = "x" }', ["[daemons.d] env", "'A=B'"]),
    ("env name empty", CMD + 'command = ["true"]\nenv = { "" = "x" }', ["[daemons.d] env", "'' is not a"]),
    ("env name NUL", CMD + 'command = ["true"]\nenv = { "A\\u0000" = "x" }', ["[daemons.d] env", "NUL"]),
    ("env value NUL", FACTORY + 'env = { K = "a\\u0000b" }', ["[daemons.d] env.K", "without NUL"]),
    ("argument NUL", CMD + 'command = ["true", "a\\u0000"]', ["[daemons.d] command", "without NUL"]),
    ("command line NUL", CMD + 'command = "true a\\u0000b"', ["[daemons.d] command", "without NUL"]),
    ("factory NUL", '[daemons.d]\nfactory = "cli_app:Qu\\u0000ick"', ["[daemons.d] factory", "without NUL"]),
    ("cwd too long", CMD + f'command = ["true"]\ncwd = "{"c" * 300}"', ["[daemons.d] cwd", "a directory"]),
    ("socket NUL", '[procman]\nsocket = "a\\u0000b"\n' + FACTORY, ["[procman] socket", "without NUL"]),
    ("socket too long", f'[procman]\nsocket = "{"s" * 120}"\n' + FACTORY, ["[procman] socket", "107 bytes"]),
    ("socket a directory", '[procman]\nsocket = "."\n' + FACTORY, ["[procman] socket", "is a directory"]),
    ("metrics port 0", "[procman]\nmetrics = 0\n" + FACTORY, ["[procman] metrics", "ports are 1-65535"]),
    ("metrics no port", '[procman]\nmetrics = "localhost"\n' + FACTORY, ["[procman] metrics", '"HOST:PORT"']),
    ("log_size too small", FACTORY + 'log_size = "10B"', ["[daemons.d] log_size", "from 1KB to 1TB"]),
    ("log_size bad unit", FACTORY + 'log_size = "10 parsecs"', ["[daemons.d] log_size", '"10MB"']),
    ("log_count zero", FACTORY + "log_count = 0", ["[daemons.d] log_count", ">= 1"]),
    ("log_file a directory", FACTORY + 'log_file = "."', ["[daemons.d] log_file", "is a directory"]),
    ("start_retries negative", FACTORY + "start_retries = -1", ["[daemons.d] start_retries", ">= 0"]),
    ("instances zero", FACTORY + "instances = 0", ["[daemons.d] instances", ">= 1"]),
    ("instances too many", FACTORY + "instances = 100000", ["[daemons.d] instances"]),
    (
        "instance name taken",
        FACTORY + 'instances = 2\n[daemons.d-1]\ncommand = ["true"]',
        ["[daemons.d-1]", "'d-1' is already used"],
    ),
    ("autostart a string", FACTORY + 'autostart = "no"', ["[daemons.d] autostart", "true or false"]),
    ("env_file missing", FACTORY + 'env_file = "nope.env"', ["[daemons.d] env_file", "a readable file"]),
    ("max_memory_mb negative", FACTORY + "max_memory_mb = -5", ["[daemons.d] max_memory_mb"]),
    (
        "depends on a daemon not started",
        FACTORY + 'depends_on = ["e"]\n[daemons.e]\ncommand = ["true"]\nautostart = false',
        ["[daemons.d] depends_on", "'e' has autostart = false"],
    ),
    (
        "kwargs not taken",
        JOB + "every = 1\nkwargs = { y = 1 }",
        ["[jobs.j] kwargs", "cli_app:square cannot be called", "unexpected keyword argument 'y'"],
    ),
    (
        "args missing",
        '[jobs.j]\nfunction = "cli_app:square"\nevery = 1',
        ["[jobs.j] args", "missing a required argument: 'x'"],
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
def test_a_value_run_would_trip_over_is_one_line_at_check_and_run(
    case: str, text: str, expected: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    sock = tmp_path / "s.sock"
    for command, extra in (("check", []), ("run", ["--socket", str(sock)])):
        out = run_procman(command, str(config), *extra)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "Traceback" not in out.stdout + out.stderr, (command, out.stderr)
        assert out.stderr.startswith(f"procman: {config}: ") and out.stderr.count("\n") == 1, out.stderr
        for words in expected:
            assert words in out.stderr, (command, words, out.stderr)
        assert "starting" not in out.stdout and not sock.exists()


# Wrong values of every type for every key: each file loads, or is refused with one ConfigError line.
WRONG: list[object] = [
    True, 0, -1, 2**63 - 1, -(2**63), 1e308, 5e-324, float("inf"), float("nan"), "", "x", "\0", "=",
    "A" * 300, "1e400s", "99999999999999999999d", "0.0000001ms", [], [1], ["a\0"], [[[[]]]], {}, {"a": 1},
    {"": "x"}, {"a=b": "x"}, {"K": "a\0"},
]  # fmt: skip
DATES = ["2026-01-01", "12:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
KEYS = {
    '[procman]\n{kv}\n[daemons.d]\nfactory = "cli_app:Quick"': [
        "start_timeout", "stop_timeout", "start_method", "socket", "metrics",
    ],
    '[daemons.d]\nfactory = "cli_app:Quick"\n{kv}': [
        "factory", "args", "kwargs", "env", "cwd", "restart", "max_restarts", "within", "reset_after",
        "start_timeout", "stop_timeout", "term_timeout", "watchdog", "depends_on", "backoff",
        "autostart", "env_file", "max_memory_mb", "log_file", "log_size", "log_count", "instances",
        "start_retries",
    ],
    '[daemons.d]\n{kv}': ["command"],
    '[daemons.d]\ncommand = ["true"]\n{kv}': ["env", "cwd"],
    FACTORY + "\n[daemons.d.backoff]\n{kv}": ["initial", "factor", "max", "jitter"],
    "[pool]\n{kv}\n" + JOB + "every = 1": [
        "workers", "start_method", "max_tasks_per_worker", "max_memory_mb", "backend", "address",
    ],
    JOB + "every = 1\n{kv}": ["function", "args", "kwargs", "timeout", "retries", "overlap", "max_instances"],
    JOB + "{kv}": ["every", "cron", "at"],
    CRON + "{kv}": ["timezone"],
}  # fmt: skip


def _toml(value: object) -> str:
    """``value`` written as TOML."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    assert isinstance(value, (int, float))
    return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan as TOML spells them


def test_wrong_values_for_every_key_never_raise_anything_but_one_config_error(tmp_path: Path) -> None:
    tried = 0
    for template, keys in KEYS.items():
        for key in keys:
            for text in [_toml(v) for v in WRONG] + DATES:
                path = tmp_path / f"c{tried}.toml"
                path.write_text(template.format(kv=f"{key} = {text}") + "\n")
                tried += 1
                try:
                    load(path)
                except ConfigError as exc:
                    assert "\n" not in str(exc), (key, text, str(exc))
                    assert str(exc).startswith(f"{path}: "), (key, text, str(exc))
    assert tried > 1000


# -- the control socket's path: obstacles are one line, never a traceback ----------------------------


def _plain_user(cmd: list[str]) -> list[str]:
    """``cmd`` as a user without root's file permission overrides (as is, if we are not root)."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv to drop root's CAP_DAC_OVERRIDE and CAP_FOWNER")
    drop = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--bounding-set={drop}", "--inh-caps=-all", "--", *cmd]


def _stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # no listener: what a procman that was killed leaves behind


def _another_users(path: Path, mode: int) -> None:
    """Make ``path`` another user's (root: chown to nobody), else one we cannot change (read-only)."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        os.chmod(path, mode)
    elif path.is_dir():
        os.chmod(path, 0o555)
    else:
        pytest.skip("only root can give a file to another user")


def _unremovable_stale(d: Path) -> Path:
    path = d / "ctl.sock"
    _stale_socket(path)
    if os.geteuid() == 0:  # in another user's sticky directory, as /tmp: only they may remove it
        _another_users(path, 0o777)  # connectable (so: known to be stale), not removable
        _another_users(d, 0o1777)
    else:
        os.chmod(d, 0o555)
    return path


def _their_socket(d: Path) -> Path:
    path = d / "ctl.sock"
    _stale_socket(path)
    os.chmod(d, 0o1777)
    _another_users(path, 0o600)  # we may not even connect: it may be in use
    return path


def _a_directory(d: Path) -> Path:
    (d / "ctl.sock").mkdir()
    return d / "ctl.sock"


def _read_only_dir(d: Path) -> Path:
    os.chmod(d, 0o555)
    return d / "ctl.sock"


OBSTACLES: list[tuple[str, Callable[[Path], Path], list[str]]] = [
    ("stale socket we cannot remove", _unremovable_stale, ["cannot remove the stale socket", "rm "]),
    ("socket of another user", _their_socket, ["is a socket of user 'nobody'", "--socket PATH"]),
    ("a directory in its place", _a_directory, ["exists and is not a socket (a directory)", "remove it"]),
    ("a directory we cannot write", _read_only_dir, ["cannot listen on", "--socket PATH"]),
]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pmob-"))
    os.chmod(d, 0o755)  # reachable by the user the test runs procman as
    try:
        yield d
    finally:
        for sub in (d / "run", d):
            if sub.is_dir() and not sub.is_symlink():
                os.chmod(sub, 0o700)  # removable again (a read-only directory, when not root)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(("case", "make", "expected"), OBSTACLES, ids=[o[0] for o in OBSTACLES])
def test_an_obstacle_on_the_socket_path_is_one_line(
    case: str, make: Callable[[Path], Path], expected: list[str], shared_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "app.toml"
    config.write_text(FACTORY)
    work = shared_dir / "run"
    work.mkdir()
    path = make(work)
    cmd = [sys.executable, "-m", "procman", "run", str(config), "--socket", str(path)]
    out = subprocess.run(
        _plain_user(cmd), capture_output=True, text=True, env=_env(), timeout=60, check=False
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    (line,) = text.splitlines()  # the error, and nothing started
    assert str(path) in line, line
    for words in expected:
        assert words in line, (words, line)


# -- the default socket's directory: a squatted /tmp/procman-UID is never used -----------------------


def _squat_mode(d: Path) -> None:
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)  # anyone may put a socket (or a symlink named like ours) in it


def _squat_link(d: Path) -> None:
    target = d.parent / "theirs"
    target.mkdir(mode=0o700)
    d.symlink_to(target)


def _squat_owner(d: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)


def _squat_file(d: Path) -> None:
    d.write_text("")


SQUATS: list[tuple[str, Callable[[Path], None], str]] = [
    ("mode 0777", _squat_mode, "has mode 0777, not 0700"),
    ("a symlink", _squat_link, "is a symbolic link"),
    ("another user's", _squat_owner, "belongs to user 'nobody'"),
    ("a file", _squat_file, "is not a directory"),
]


@pytest.fixture
def no_runtime_dir() -> Iterator[tuple[dict[str, str], Path, Path]]:
    """The environment of a user without $XDG_RUNTIME_DIR, with a fresh $TMPDIR and $HOME."""
    root = Path(tempfile.mkdtemp(prefix="pmsq-"))  # short: a socket path must fit in 107 bytes
    tmp, home = root / "t", root / "h"
    tmp.mkdir(mode=0o755)
    home.mkdir(mode=0o755)
    env = _env(TMPDIR=str(tmp), HOME=str(home))
    env.pop("XDG_RUNTIME_DIR", None)
    try:
        yield env, tmp, home
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("case", "squat", "why"), SQUATS, ids=[s[0] for s in SQUATS])
def test_a_squatted_tmp_directory_is_never_used(
    case: str,
    squat: Callable[[Path], None],
    why: str,
    no_runtime_dir: tuple[dict[str, str], Path, Path],
    tmp_path: Path,
) -> None:
    env, tmp, home = no_runtime_dir
    squatted = tmp / f"procman-{os.getuid()}"
    squat(squatted)
    before = sorted(os.listdir(squatted)) if squatted.is_dir() else None
    config = tmp_path / "app.toml"
    config.write_text(FACTORY)
    p = Procman(config, None, env)
    try:
        p.wait_line(READY)
        p.wait_line(rf"procman +\| not using an unsafe socket directory: {re.escape(str(squatted))} {why}")
        out = run_procman("status", "--json", "-c", str(config), env=env)  # the client finds it too
        assert out.returncode == 0, out.stderr
        sock = Path(orjson.loads(out.stdout)["socket"])
        assert sock.parent == home / ".procman", sock
        assert stat.S_IMODE((home / ".procman").lstat().st_mode) == 0o700
        assert run_procman("status", env=env).returncode == 0  # and the only one running, without -c
        if before is not None:
            assert sorted(os.listdir(squatted)) == before  # nothing was put in the squatted one
        if squatted.is_dir() and not squatted.is_symlink():
            assert stat.S_IMODE(squatted.lstat().st_mode) == (0o777 if case == "mode 0777" else 0o700)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait_exit() == 0
    finally:
        p.close()


def test_no_safe_socket_directory_is_one_line(
    no_runtime_dir: tuple[dict[str, str], Path, Path], tmp_path: Path
) -> None:
    env, tmp, home = no_runtime_dir
    squatted = tmp / f"procman-{os.getuid()}"
    _squat_mode(squatted)
    os.chmod(home, 0o777)  # another user could swap ~/.procman for theirs
    config = tmp_path / "app.toml"
    config.write_text(FACTORY)
    for args in (("run", str(config)), ("status", "-c", str(config)), ("status",)):
        out = run_procman(*args, env=env)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        text = out.stdout + out.stderr
        assert "Traceback" not in text and text.count("\n") == 1, text
        assert "no safe directory for the control socket" in text, text
        assert f"{squatted} has mode 0777" in text and f"{home} may be changed by other users" in text
        assert "XDG_RUNTIME_DIR" in text and "--socket PATH" in text
    assert os.listdir(squatted) == []


# -- control requests: every one answered, the server goes on ----------------------------------------


WEB = FACTORY.replace("[daemons.d]", "[daemons.web]")


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Procman]:
    """``procman run`` of one daemon, ready, on the socket ``tmp_path/ctl.sock``."""
    config = tmp_path / "app.toml"
    config.write_text(WEB)
    p = Procman(config, tmp_path / "ctl.sock")
    try:
        p.wait_line(READY)
        yield p
    finally:
        p.close()


def _ask(f: io.BufferedReader, s: socket.socket, data: bytes) -> dict[str, Any]:
    s.sendall(data)
    line = f.readline()
    assert line.endswith(b"\n"), f"connection closed without an answer to {data[:60]!r}"
    answer: dict[str, Any] = orjson.loads(line)
    return answer


def test_every_control_request_gets_an_answer(web: Procman) -> None:
    p = web
    assert p.sock is not None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.settimeout(30)
    try:
        s.connect(str(p.sock))
        other.connect(str(p.sock))  # an idle client meanwhile: served as well afterwards
        f = s.makefile("rb")
        limit = f"request too large (limit {MAX_REQUEST >> 20} MiB)"
        huge = _ask(f, s, b'{"cmd": "logs", "name": "' + b"x" * (3 * MAX_REQUEST) + b'"}\n')
        assert huge["ok"] is False and limit in huge["error"], huge
        bad = {
            b"not json\n": "not JSON",
            b"\xff\xfe\n": "not JSON",
            b"[1, 2]\n": "a request is a JSON object",
            b'{"cmd": "reboot"}\n': "unknown command 'reboot'",
            b'{"cmd": 5}\n': "unknown command 5",
            b"{}\n": "unknown command None",
            b'{"cmd": "status", "name": {}}\n': "name must be a string",
            b'{"cmd": "logs", "name": "web", "lines": "x"}\n': "lines must be a whole number",
            b'{"cmd": "logs", "name": "web", "lines": 1e22}\n': "lines must be a whole number",
            b'{"cmd": "restart", "name": "nope"}\n': "no daemon named 'nope'",
            b'{"cmd": "stop", "name": ["web"]}\n': "name must be a string",
            b'{"cmd": "status"} trailing\n': "not JSON",
        }
        for request, words in bad.items():
            answer = _ask(f, s, request)
            assert answer["ok"] is False and words in answer["error"], (request, answer)
        # the line over the limit may also come in pieces, slowly: answered once it passes the limit
        s.sendall(b"y" * (MAX_REQUEST // 2))
        s.sendall(b"y" * (MAX_REQUEST // 2 + 10))
        assert limit in orjson.loads(f.readline())["error"]
        s.sendall(b"y" * 1000 + b"\n")  # the rest of that line is skipped, not answered again
        assert _ask(f, s, b'{"cmd": "status"}\n')["ok"] is True  # the same connection serves on
        other_f = other.makefile("rb")
        assert _ask(other_f, other, b'{"cmd": "status"}\n')["ok"] is True
        f.close()
        other_f.close()
    finally:
        s.close()
        other.close()
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0
    assert not any("Traceback" in line or "Exception" in line for line in p.lines), p.lines


def test_the_client_prints_the_answer_to_a_request_too_large(
    web: Procman, capsys: pytest.CaptureFixture[str]
) -> None:
    p = web
    assert p.sock is not None
    # argv cannot carry a 2 MiB argument (128 KiB at most): call the command in-process
    assert main(["logs", "w" * (2 * MAX_REQUEST), "--socket", str(p.sock)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"procman: request too large (limit {MAX_REQUEST >> 20} MiB); "), err
    assert err.count("\n") == 1, err
    assert main(["status", "--socket", str(p.sock)]) == 0  # and it serves on
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_exit() == 0


# -- the console: a flood into a pipe nobody reads stays within QUEUE_BYTES ----------------------------


DROPPED = re.compile(r"procman +\| \.\.\. (\d+) lines? dropped: the output could not keep up")


class _BlockedStream(io.StringIO):
    """A terminal that stopped reading: write() blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.released.wait(60), "never released"
        return super().write(s)


def test_the_console_queue_is_bounded_in_bytes_and_counts_what_it_drops() -> None:
    stream = _BlockedStream()
    console = Console(["flood"], stream)
    console.line("flood", "first")
    assert stream.entered.wait(10)  # the writer is stuck in write()
    long = "x" * 60_000
    count = 400  # 24 MB: six times the queue

    def flood() -> None:
        for i in range(count):
            console.line("flood", f"{i} {long}")

    t = threading.Thread(target=flood)
    t.start()
    t.join(60)
    assert not t.is_alive(), "a blocked terminal blocked the caller"
    assert 0 < console.queued_bytes <= QUEUE_BYTES
    dropped = console.dropped_lines
    assert dropped > count // 2
    assert len(console.lines_of("flood", count + 1) or []) == count + 1  # `procman logs` has them all
    stream.released.set()
    console.close(30)
    lines = stream.getvalue().splitlines()
    notices = [int(m[1]) for x in lines if (m := DROPPED.search(x))]
    written = [x for x in lines if re.search(r"flood +\| \d+ x+$", x)]
    assert notices and sum(notices) == dropped, lines[-3:]
    assert len(written) + dropped == count
    assert console.queued_bytes == 0


FLOOD = """
import sys, time
line = "x" * 64000 + "\\n"
for i in range({lines}):
    sys.stdout.write(str(i) + line)
sys.stdout.write("flood done\\n")
sys.stdout.flush()
time.sleep(3600)
"""


def test_a_flood_into_a_pipe_nobody_reads_stays_bounded(tmp_path: Path) -> None:
    # 16 MB: four times the console's queue, half of what the manager's own line queue takes
    script = FLOOD.format(lines=250)
    config = tmp_path / "app.toml"
    config.write_text(f"[daemons.flood]\ncommand = {_toml([sys.executable, '-u', '-c', script])}\n")
    sock = tmp_path / "ctl.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "procman", "run", str(config), "--socket", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        text=True,
    )
    lines: list[str] = []
    cond = threading.Condition()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with cond:
                lines.append(line)
                cond.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    started = False
    try:
        # nobody reads procman's stdout: until every line reached procman (`procman logs` has the
        # last one), control requests are answered all the same
        deadline = time.monotonic() + 60
        while True:
            logs = run_procman("logs", "flood", "-n", "1", "--socket", str(sock))
            if logs.returncode == 0 and logs.stdout.endswith("flood done\n"):
                break
            assert time.monotonic() < deadline, (logs.stdout[-200:], logs.stderr)
            time.sleep(0.05)
        status = run_procman("status", "--json", "--socket", str(sock))
        assert status.returncode == 0, status.stderr
        output = orjson.loads(status.stdout)["output"]
        assert output["queued_bytes"] <= QUEUE_BYTES
        assert output["dropped_lines"] > 100  # 12 MB could not wait
        reader.start()  # output flows again: the notice comes
        started = True
        with cond:
            assert cond.wait_for(lambda: any(DROPPED.search(x) for x in lines), 60), lines[-3:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(10)
        notices = [int(m[1]) for x in lines if (m := DROPPED.search(x))]
        assert sum(notices) >= output["dropped_lines"]
        assert not any("Traceback" in x for x in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if not started:
            reader.start()  # drain what is left, to the end of the pipe
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_bad_env_file_line_is_named_with_its_number(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("# ok\nGOOD=1\nthis line has no equals sign\n")
    config = tmp_path / "app.toml"
    config.write_text(FACTORY + 'env_file = "app.env"\n')
    out = run_procman("check", str(config))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "[daemons.d] env_file" in out.stderr and "app.env line 3: expected NAME=value" in out.stderr
