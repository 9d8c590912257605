"""The control socket: a Unix socket (mode 0600, in a private directory) speaking JSON lines.

A client writes one JSON object per line (``{"cmd": "status"}``) and reads one JSON object per line
back (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). Every line gets an answer: one that
is not JSON, not an object, an unknown command or longer than :data:`MAX_REQUEST` gets an error (the
rest of a line that is too long is skipped, and the connection serves the next one). Never TCP:
whoever can open the socket controls the daemons, so the file system's permissions are the access
control.

Where default sockets live (:func:`runtime_dir`): the first of ``$XDG_RUNTIME_DIR/procman``,
``$TMPDIR/procman-UID`` (``/tmp/procman-UID``) and ``~/.procman`` that is a directory of this user
with mode 0700, not a symbolic link, in a directory no other user can rename it out of, or that can
be created so. A name in ``/tmp`` is predictable: another user may create it first, to block
procman or to have its clients talk to their socket. Such a directory is never used (nor repaired):
the next one is. Servers and clients apply the same rule, so they agree on the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import re
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from procman import ProcmanError

MAX_REQUEST = 1 << 20  # bytes in one request line
CLIENT_IDLE = 300.0  # seconds a connected client may stay silent before it is dropped
SUN_PATH_MAX = 107  # bytes in a Unix socket path (sun_path is 108 with its NUL)
READ_CHUNK = 65536
TOO_LARGE = f"request too large (limit {MAX_REQUEST >> 20} MiB); a request is one JSON object on one line"
ELSEWHERE = "give another socket path with --socket PATH or [procman] socket = ..."

STREAM = "_stream"  # a handler's answer may carry an async iterator of further answers (logs -f)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(ProcmanError, RuntimeError):
    """The control socket cannot be set up or reached."""


def _candidates() -> list[Path]:
    """The directories default sockets may live in, best first (see the module docstring)."""
    found = []
    for base, name in (
        (os.environ.get("XDG_RUNTIME_DIR"), "procman"),
        (tempfile.gettempdir(), f"procman-{os.getuid()}"),
        (os.environ.get("HOME"), ".procman"),
    ):
        if base and os.path.isabs(base):
            found.append(Path(base) / name)
    return found


def _owner(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _unsafe(path: Path) -> str | None:
    """Why ``path`` may not hold this user's sockets, or None if it may (or may be created so)."""
    try:
        parent = os.stat(path.parent)  # following links: /tmp may be one
    except OSError as exc:
        return f"{path.parent}: {exc.strerror or exc}"
    if not stat.S_ISDIR(parent.st_mode):
        return f"{path.parent} is not a directory"
    if parent.st_uid not in (os.getuid(), 0) or (
        parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX
    ):
        return f"{path.parent} may be changed by other users"  # who could swap our directory for theirs
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        creatable = os.access(path.parent, os.W_OK | os.X_OK)
        return None if creatable else f"{path} cannot be created (no write permission on {path.parent})"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    problems = (
        (stat.S_ISLNK(st.st_mode), "is a symbolic link"),
        (not stat.S_ISDIR(st.st_mode), "is not a directory"),
        (st.st_uid != os.getuid(), f"belongs to {_owner(st.st_uid)}"),
        (bool(st.st_mode & 0o077), f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"),
    )
    return next((f"{path} {what}" for bad, what in problems if bad), None)


def _choose_runtime_dir() -> tuple[Path | None, list[str]]:
    """The first safe candidate, with why the ones before it were passed over."""
    refused: list[str] = []
    for path in _candidates():
        why = _unsafe(path)
        if why is None:
            return path, refused
        refused.append(why)
    return None, refused


def runtime_dir() -> Path:
    """Where default sockets live: the first safe of ``$XDG_RUNTIME_DIR/procman``,
    ``$TMPDIR/procman-<uid>`` and ``~/.procman`` (see the module docstring).

    Raises:
        ControlError: none of them is safe; the message says why each was refused.
    """
    path, refused = _choose_runtime_dir()
    if path is None:
        raise ControlError(
            "no safe directory for the control socket: "
            + "; ".join(refused)
            + f". Set XDG_RUNTIME_DIR to a directory of yours with mode 0700, or {ELSEWHERE}"
        )
    return path


def passed_over() -> list[str]:
    """Why the directories before :func:`runtime_dir` were not used (empty when none were)."""
    return _choose_runtime_dir()[1]


def runtime_dir_text() -> str:
    """:func:`runtime_dir` for a help screen, which must show even when there is none."""
    try:
        return str(runtime_dir())
    except ControlError:
        return "(none is safe now: see README)"


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
    """Create ``path`` mode 0700, or check that an existing one is ours and private (never repair
    one that is not: someone else may have made it so, and put things in it)."""
    why = _unsafe(path)
    if why is None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            why = f"cannot create {path}: {exc.strerror or exc}"
    if why is None:  # again: it may have been made by someone else since the first look
        why = _unsafe(path)
    if why is not None:
        raise ControlError(f"unsafe socket directory: {why}; {ELSEWHERE}")
    os.chmod(path, 0o700)  # ours and private: a umask may have left out our own bits


def _alive(path: Path) -> bool:
    """Whether a procman listens on ``path`` (a socket we may not connect to counts as alive)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except PermissionError:  # another user's socket: it may well be in use
        return True
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
        """Listen on the socket path, or raise ControlError saying what is in the way.

        Every obstacle is a ControlError naming the path and what to do (never an OSError): a live
        procman, a socket of another user, a file that is not a socket, a stale socket that cannot
        be removed, a directory that is not ours, a path the system will not bind.
        """
        path = self.path
        if "\0" in str(path):
            raise ControlError(f"socket path {str(path)!r} contains a NUL character; {ELSEWHERE}")
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ControlError(
                f"socket path {path} is longer than {SUN_PATH_MAX} bytes; choose a shorter one"
            )
        if path.parent in _candidates():  # a default socket's directory: private, or not used
            _private_dir(path.parent)
        elif not path.parent.is_dir():
            raise ControlError(f"the socket's directory {path.parent} does not exist")
        self._remove_stale(path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
            os.chmod(path, 0o600)
        except OSError as exc:
            await self.close()
            raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}; {ELSEWHERE}") from None
        finally:
            os.umask(old)

    @staticmethod
    def _remove_stale(path: Path) -> None:
        """Remove a socket left behind by a procman that was killed; refuse anything else."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlError(f"cannot look at {path}: {exc.strerror or exc}; {ELSEWHERE}") from None
        if not stat.S_ISSOCK(st.st_mode):
            kind = (
                "a symbolic link"
                if stat.S_ISLNK(st.st_mode)
                else "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a file"
            )
            raise ControlError(f"{path} exists and is not a socket ({kind}); remove it or {ELSEWHERE}")
        if _alive(path):
            if st.st_uid != os.getuid():
                raise ControlError(f"{path} is a socket of {_owner(st.st_uid)}, maybe in use; {ELSEWHERE}")
            raise ControlError(
                f"another procman is running with the control socket {path}; stop it "
                "(procman stop --socket ...) or give this one another socket ([procman] socket = ...)"
            )
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            owner = f" (it belongs to {_owner(st.st_uid)})" if st.st_uid != os.getuid() else ""
            raise ControlError(
                f"cannot remove the stale socket {path}{owner}: {exc.strerror or exc}; "
                f"remove it (rm {path}) or {ELSEWHERE}"
            ) from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        buf = bytearray()
        scanned = 0  # bytes of buf known to hold no newline
        skipping = False  # in the rest of a line over MAX_REQUEST, already answered
        try:
            while True:
                end = buf.find(b"\n", scanned)
                if end >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    scanned = 0
                    if skipping:
                        skipping = False
                    elif len(line) > MAX_REQUEST:
                        await self._answer(writer, {"ok": False, "error": TOO_LARGE})
                    else:
                        response = await self._respond(line)
                        stream = response.pop(STREAM, None)
                        await self._answer(writer, response)
                        if stream is not None:  # `logs -f`: lines until the client leaves
                            await self._stream(reader, writer, stream)
                            return
                    continue
                scanned = len(buf)
                if len(buf) > MAX_REQUEST:  # answer now; the client may wait to send the rest
                    if not skipping:
                        await self._answer(writer, {"ok": False, "error": TOO_LARGE})
                        skipping = True
                    buf.clear()
                    scanned = 0
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_CHUNK), CLIENT_IDLE)
                except TimeoutError:
                    return  # silent too long
                if not chunk:  # the client is done; a last line without a newline still counts
                    if buf.strip() and not skipping:
                        await self._answer(writer, await self._respond(bytes(buf)))
                    return
                buf += chunk
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # close() ends the connections this way. Finish as if the client had left: a task
            # ending in CancelledError here is logged by asyncio's stream callback as a traceback.
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, items: AsyncIterator[dict[str, Any]]
    ) -> None:
        """Answer each of ``items`` as it comes, until they end or the client closes its end."""
        gone = asyncio.ensure_future(reader.read(1))  # the client sends nothing more: EOF = it left
        try:
            while True:
                nxt = asyncio.ensure_future(anext(items))
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                await self._answer(writer, item)
        finally:
            gone.cancel()
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _respond(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line: the handler's, or an error saying what was wrong."""
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return {"ok": False, "error": f'not JSON ({exc}); send one object per line: {{"cmd": "status"}}'}
        if not isinstance(request, dict):
            return {"ok": False, "error": 'a request is a JSON object such as {"cmd": "status"}'}
        try:
            return await self.handler(request)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)}

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        try:
            data = orjson.dumps(response, default=str)
        except TypeError as exc:  # a value orjson cannot write (a key that is not a string, ...)
            data = orjson.dumps({"ok": False, "error": f"procman could not encode its answer: {exc}"})
        writer.write(data + b"\n")
        await writer.drain()

    async def close(self) -> None:
        server, self._server = self._server, None
        await close_server(server, self._clients)
        if server is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


async def close_server(server: asyncio.AbstractServer | None, clients: set[asyncio.Task[None]]) -> None:
    """Stop listening, end the connections, wait (bounded) until the server is closed."""
    if server is None:
        return
    server.close()
    for task in list(clients):
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2.0)


def _connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the control socket, or a ControlError saying why there is none."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise ControlError(
            f"no procman is running with the control socket {path} (start one with `procman run FILE.toml`)"
        ) from None
    except PermissionError:
        s.close()
        raise ControlError(f"permission denied on {path}: it belongs to another user") from None
    except (OSError, ValueError) as exc:  # not a socket, a NUL in the path, ...
        s.close()
        raise ControlError(f"cannot connect to {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return s


def request(path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request and return the response (blocking, bounded by ``timeout``)."""
    s = _connect(path, timeout)
    try:
        try:
            s.sendall(orjson.dumps(message) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # procman stopped reading (a request too large): its answer says why
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ControlError(f"procman closed the connection on {path} before it answered")
            buf += chunk
            if len(buf) > 64 * MAX_REQUEST:
                raise ControlError("the answer is too large")
    except TimeoutError:
        raise ControlError(f"procman on {path} did not answer within {timeout:g}s") from None
    finally:
        s.close()
    try:
        response = orjson.loads(buf)
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        raise ControlError(f"unexpected answer from {path}: {bytes(buf[:200])!r}")
    return response


def request_stream(path: Path, message: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
    """Send one request; yield its answer, then each further answer as procman sends it, until
    procman ends the stream or exits. Only the connection and the first answer are bounded by
    ``timeout`` (a follow waits for lines as long as the caller wants: Ctrl-C ends it)."""
    s = _connect(path, timeout)
    try:
        s.sendall(orjson.dumps(message) + b"\n")
        buf = bytearray()
        first = True
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 1]
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ControlError(f"unexpected answer from {path}: {line[:200]!r}") from None
                yield item
                if first:
                    first = False
                    s.settimeout(None)
                continue
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise ControlError(f"procman on {path} did not answer within {timeout:g}s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if first:
                    raise ControlError(f"procman closed the connection on {path} before it answered")
                return
            buf += chunk
    finally:
        s.close()


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
