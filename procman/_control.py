"""The control socket: a Unix socket (mode 0600, in a private directory) speaking JSON lines.

A client writes one JSON object per line (``{"cmd": "status"}``) and reads one JSON object per line
back (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). Never TCP: whoever can open the
socket controls the daemons, so the file system's permissions are the access control.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from ._errors import ProcmanError

MAX_REQUEST = 1 << 20  # bytes in one request line
CLIENT_IDLE = 300.0  # seconds a connected client may stay silent before it is dropped
SUN_PATH_MAX = 107  # bytes in a Unix socket path (sun_path is 108 with its NUL)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(ProcmanError, RuntimeError):
    """The control socket cannot be set up or reached."""


def runtime_dir() -> Path:
    """Where sockets live: ``$XDG_RUNTIME_DIR/procman``, else ``/tmp/procman-<uid>``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "procman"
    return Path(tempfile.gettempdir()) / f"procman-{os.getuid()}"


def config_key(config_path: str | os.PathLike[str]) -> Path:
    """The config file's absolute path, symlinks resolved: what ``run`` and ``-c`` both name it by."""
    return Path(os.path.realpath(config_path))


def default_socket(config_path: str | os.PathLike[str]) -> Path:
    """The socket of the procman running ``config_path``: ``<stem>-<hash>.sock`` in :func:`runtime_dir`.

    The hash is the first 10 hex digits of the SHA-256 of the file's absolute path, so two projects
    that both have an ``app.toml`` get two sockets, and ``procman status -c app.toml`` finds the one
    of that very file.
    """
    path = config_key(config_path)
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "procman"
    d = runtime_dir()
    # AF_UNIX paths are limited to SUN_PATH_MAX bytes: a long stem is cut, and when even a short one
    # does not fit (a very deep runtime directory) the name is the hash alone. If that is still too
    # long, ControlServer.start says so and asks for --socket or [procman] socket.
    room = SUN_PATH_MAX - len(os.fsencode(d / f"-{digest}.sock"))
    if room < 1:
        return d / f"{digest}.sock"
    return d / f"{stem[:room]}-{digest}.sock"


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 0700, or check that an existing one is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(f"cannot create the socket directory {path}: {exc.strerror or exc}") from None
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ControlError(f"{path} is not a directory owned by you; set a socket path of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


class ControlServer:
    """Serves ``handler`` on a Unix socket on the running event loop."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        path = self.path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ControlError(
                f"socket path {path} is longer than {SUN_PATH_MAX} bytes; choose a shorter one"
            )
        if path.parent == runtime_dir():
            _private_dir(path.parent)
        elif not path.parent.is_dir():
            raise ControlError(f"the socket's directory {path.parent} does not exist")
        if path.exists() or path.is_symlink():
            if _alive(path):
                raise ControlError(
                    f"another procman is running with the control socket {path}; stop it "
                    "(procman stop --socket ...) or give this one another socket ([procman] socket = ...)"
                )
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ControlError(f"{path} exists and is not a socket; remove it or choose another path")
            path.unlink()  # left behind by a procman that was killed
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), CLIENT_IDLE)
                except (TimeoutError, ValueError, ConnectionError):
                    return  # silent too long, or a line over the limit
                if not line:
                    return
                try:
                    request = orjson.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError('a request is a JSON object such as {"cmd": "status"}')
                    response = await self.handler(request)
                except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
                    response = {
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc),
                    }
                writer.write(orjson.dumps(response, default=str) + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        with contextlib.suppress(OSError):
            self.path.unlink()


def request(path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request and return the response (blocking, bounded by ``timeout``)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"no procman is running with the control socket {path} "
                "(start one with `procman run FILE.toml`)"
            ) from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: it belongs to another user") from None
        s.sendall(orjson.dumps(message) + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ControlError(f"procman closed the connection on {path} before it answered")
            buf += chunk
            if len(buf) > 64 * MAX_REQUEST:
                raise ControlError("the answer is too large")
    except TimeoutError:
        raise ControlError(f"procman on {path} did not answer within {timeout:g}s") from None
    finally:
        s.close()
    response = orjson.loads(buf)
    if not isinstance(response, dict):
        raise ControlError(f"unexpected answer from {path}: {response!r}")
    return response


def find_socket() -> Path:
    """The one live socket in the runtime directory, or a ControlError saying what to pass."""
    d = runtime_dir()
    live = sorted(p for p in d.glob("*.sock") if _alive(p)) if d.is_dir() else []
    if len(live) == 1:
        return live[0]
    if not live:
        raise ControlError(
            f"no procman is running (no live socket in {d}); start one with `procman run FILE.toml`, "
            "or pass --socket PATH"
        )
    raise ControlError(
        "several procman instances are running; choose one with -c FILE.toml or --socket PATH: "
        + ", ".join(str(p) for p in live)
    )


def sd_notify(message: str) -> bool:
    """Tell systemd (``Type=notify``) about our state, if it asked (``NOTIFY_SOCKET``)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(message.encode(), addr)
    except OSError:
        return False
    finally:
        s.close()
    return True
