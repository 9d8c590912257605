"""A throwaway PostgreSQL server on loopback for the tests: a real one, never a mock.

    with pg_server.running() as url:  # postgresql://postgres@127.0.0.1:PORT/procworks_test
        db = pg_server.new_database(url, "test_something")  # one fresh database per test

:func:`running` finds the PostgreSQL binaries (``initdb`` on PATH, else the newest
``/usr/lib/postgresql/*/bin``), makes a cluster in a temporary directory (``initdb -A trust
--no-sync``), and runs ``postgres`` as its own child (no ``pg_ctl`` daemon in between: it keeps the
postmaster's pid, waits for it, and reaps it). The server listens on 127.0.0.1 only, on a free port,
with its unix socket in the temporary directory, its log in ``server.log`` there, and durability off
(fsync, synchronous_commit and full_page_writes: the data is thrown away). At the end of the ``with``
block it is stopped (fast shutdown, then immediate, then SIGKILL, each wait bounded) and the directory
removed.

PostgreSQL refuses to run as root: under euid 0 initdb and the server run as the ``postgres``
system user (``subprocess``'s ``user``/``group``/``extra_groups``, no ``preexec_fn``). Where
``setpriv`` has ``--pdeathsig`` (util-linux 2.33 or later) the server is also given SIGQUIT (an
immediate shutdown) by the kernel if the thread that started it ends, say the test process killed
by SIGKILL; its temporary directory then stays behind.

Whatever prevents a server from starting raises :class:`PostgresUnavailable`, saying why: the tests
that need one skip with that message. :func:`server` uses the server that ``.ci/postgres start``
started (``PROCWORKS_PG_URL``) where there is one.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from helpers import descendants

SUPERUSER = "postgres"  # the cluster's superuser (initdb -U), whoever runs the server
DATABASE = "procworks_test"  # the database running() makes and names in its URL
RUN_AS = "postgres"  # the system user the server runs as when this process is root
ENV_URL = "PROCWORKS_PG_URL"  # a server started beforehand (.ci/postgres start), for server()

INITDB_TIMEOUT = 120.0
START_TIMEOUT = 30.0
FAST_STOP_TIMEOUT = 10.0  # SIGINT: a fast shutdown (pg_ctl stop -m fast)
IMMEDIATE_STOP_TIMEOUT = 5.0  # SIGQUIT: an immediate shutdown (pg_ctl stop -m immediate)
KILL_TIMEOUT = 5.0  # SIGKILL to the postmaster and its children
PORT_ATTEMPTS = 3  # the free port may be taken before the server binds it: try another

SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}

SEARCHED = "/usr/lib/postgresql/*/bin"


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be started here; the message says why."""


@dataclass(frozen=True)
class _Identity:
    """Who initdb and the server run as: ``None`` fields keep this process's own."""

    uid: int | None = None
    gid: int | None = None
    extra_groups: list[int] | None = None
    name: str | None = None


def find_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: that of ``initdb`` on PATH (of its symlink's
    target first), else the newest ``/usr/lib/postgresql/VERSION/bin``."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]
    candidates += sorted((Path(d) for d in glob.glob(SEARCHED)), key=_version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    found = f"initdb at {on_path} but no postgres beside it" if on_path else "no initdb on PATH"
    raise PostgresUnavailable(
        f"no PostgreSQL binaries: {found}, none in {SEARCHED} (PATH={os.environ.get('PATH', '')}); "
        "install them (apt-get install postgresql)"
    )


def _version(directory: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/9.6/bin`` -> (9, 6); a name that is not a version comes as the oldest."""
    try:
        return tuple(int(part) for part in directory.parent.name.split("."))
    except ValueError:
        return ()


def _identity() -> _Identity:
    """This process's identity, or the ``postgres`` user's where this process is root."""
    if os.geteuid() != 0:
        return _Identity()
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root (PostgreSQL refuses to) and there is no {RUN_AS!r} user to run it as: "
            f"create one (useradd --system {RUN_AS}) or run the tests as another user"
        ) from None
    if user.pw_uid == 0:
        raise PostgresUnavailable(f"the {RUN_AS!r} user is root (uid 0): PostgreSQL refuses to run as root")
    return _Identity(user.pw_uid, user.pw_gid, [], RUN_AS)


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from / down to ``path`` lets anyone through (o+x)."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _make_temp_dir(who: _Identity) -> Path:
    """A fresh directory that ``who`` owns: under $TMPDIR, or /tmp where another user cannot reach it."""
    base = Path(tempfile.gettempdir())
    if who.uid is not None and not _traversable_by_others(base):
        base = Path("/tmp")
    tmp = Path(tempfile.mkdtemp(prefix="procworks-pg-", dir=base))
    if who.uid is not None and who.gid is not None:
        os.chown(tmp, who.uid, who.gid)
    return tmp


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig QUIT --`` where this setpriv has the option, else nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "QUIT", "--")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _initdb(bin_dir: Path, data: Path, who: _Identity) -> None:
    cmd = [
        str(bin_dir / "initdb"),
        *("-D", str(data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"),
    ]
    try:
        done = subprocess.run(
            cmd,
            cwd=data.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INITDB_TIMEOUT,
            check=False,
            user=who.uid,
            group=who.gid,
            extra_groups=who.extra_groups,
        )
    except subprocess.TimeoutExpired:
        raise PostgresUnavailable(f"initdb did not finish within {INITDB_TIMEOUT:.0f} s: {cmd}") from None
    except OSError as e:
        raise PostgresUnavailable(f"initdb could not run: {e}") from None
    if done.returncode != 0:
        as_user = f" as user {who.name!r}" if who.name else ""
        raise PostgresUnavailable(
            f"initdb{as_user} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}"
        )


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server may lose it to another process: see PORT_ATTEMPTS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(bin_dir: Path, tmp: Path, port: int, who: _Identity) -> subprocess.Popen[bytes]:
    settings = {**SETTINGS, "port": str(port), "unix_socket_directories": str(tmp)}
    cmd = [*_pdeathsig_prefix(), str(bin_dir / "postgres"), "-D", str(tmp / "data")]
    for name, value in settings.items():
        cmd += ["-c", f"{name}={value}"]
    with open(tmp / "server.log", "ab") as log:  # the server writes its log to its stderr
        try:
            return subprocess.Popen(
                cmd,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # a ^C to the terminal's process group is for the tests, not the server
                user=who.uid,
                group=who.gid,
                extra_groups=who.extra_groups,
            )
        except OSError as e:
            raise PostgresUnavailable(f"postgres could not run: {e}") from None


def _is_ready(data: Path, pid: int) -> bool:
    """Whether postmaster.pid says ``pid`` accepts connections (what ``pg_ctl -w`` waits for)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    # pid, data directory, start time, port, socket directory, listen address, shmem key, status
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _log_since(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and reap it: a fast shutdown, else an immediate one, else SIGKILL, all bounded."""
    for sig, timeout in ((signal.SIGINT, FAST_STOP_TIMEOUT), (signal.SIGQUIT, IMMEDIATE_STOP_TIMEOUT)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    orphans = descendants([proc.pid])  # before they lose their parent
    for pid in [proc.pid, *orphans]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_TIMEOUT)


def _wait_ready(proc: subprocess.Popen[bytes], data: Path, log: Path, offset: int) -> bool:
    """Wait for the postmaster to accept connections: True when it does, False when it exited because
    its port was taken, PostgresUnavailable for anything else (the log since ``offset`` says what)."""
    deadline = time.monotonic() + START_TIMEOUT
    while not _is_ready(data, proc.pid):
        if proc.poll() is not None:
            said = _log_since(log, offset)
            if "could not bind" in said or "could not create any TCP/IP sockets" in said:
                return False
            raise PostgresUnavailable(f"postgres exited (status {proc.returncode}) on start: {_tail(said)}")
        if time.monotonic() > deadline:
            raise PostgresUnavailable(
                f"postgres did not accept connections within {START_TIMEOUT:.0f} s: "
                f"{_tail(_log_since(log, offset))}"
            )
        time.sleep(0.02)
    return True


def _start(bin_dir: Path, tmp: Path, who: _Identity) -> tuple[subprocess.Popen[bytes], int]:
    """The running postmaster and its port; a port taken meanwhile is replaced by another."""
    log = tmp / "server.log"
    for _attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        offset = log.stat().st_size if log.exists() else 0
        proc = _spawn(bin_dir, tmp, port, who)
        try:
            if _wait_ready(proc, tmp / "data", log, offset):
                return proc, port
        except BaseException:  # not ready in time, or the wait interrupted (^C)
            _stop(proc)
            raise
    raise PostgresUnavailable(
        f"postgres found its port taken {PORT_ATTEMPTS} times: {_tail(_log_since(log, 0))}"
    )


def url_for(port: int, database: str = "postgres") -> str:
    """The URL of ``database`` on the server of ``port``, as its superuser (trust: no password)."""
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{quote(database, safe='')}"


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


@contextlib.contextmanager
def running(database: str | None = DATABASE) -> Iterator[str]:
    """A fresh PostgreSQL server on 127.0.0.1 for the ``with`` block; yields the URL of a new, empty
    ``database`` on it (of the ``postgres`` database where ``database`` is None).

    Raises PostgresUnavailable where the server cannot be started. The server and its directory are
    gone when the block ends, however it ends.
    """
    bin_dir = find_bin_dir()
    who = _identity()
    tmp = _make_temp_dir(who)
    try:
        _initdb(bin_dir, tmp / "data", who)
        proc, port = _start(bin_dir, tmp, who)
        try:
            url = url_for(port)
            yield new_database(url, database) if database else url
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def server(database: str | None = DATABASE) -> Iterator[str]:
    """The server ``.ci/postgres start`` started (``$PROCWORKS_PG_URL``; a new, empty ``database``
    on it), else a :func:`running` one for the ``with`` block."""
    url = os.environ.get(ENV_URL)
    if url:
        yield new_database(url, database) if database else url
    else:
        with running(database) as url:
            yield url


def new_database(url: str, name: str) -> str:
    """A new, empty database ``name`` on the server of ``url`` (dropped first if there is one, whoever
    is connected to it), and its URL."""
    import psycopg
    from psycopg import sql

    maintenance = with_database(url, "postgres")
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
        force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(url, name)
