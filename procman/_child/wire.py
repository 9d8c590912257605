"""The wire protocol between a manager and its children.

Every message is one frame on a pipe: a 4-byte little-endian length, then the body. The body's first
byte says how the rest is encoded:

* ``J`` - a small typed control record encoded with orjson: ``{"t": "ready"}``, ``{"t": "hb"}``,
  ``{"t": "stopping"}``, ``{"t": "stop"}``, ``{"t": "error", ...}``.
* ``P`` - a pickled payload (jobs and results in :mod:`workers`).

Both ends keep frames small and never interleave partial frames: writers hold a lock (child) or
write from the single I/O thread (parent).
"""

from __future__ import annotations

import os
import signal
import struct
import traceback
from collections.abc import Iterator
from typing import Any

import orjson

from . import pickling

HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30
KIND_JSON = ord("J")
KIND_PICKLE = ord("P")


def encode_json(msg: dict[str, Any]) -> bytes:
    """One JSON frame, header included."""
    body = b"J" + orjson.dumps(msg)
    return HEADER.pack(len(body)) + body


def encode_raw(kind: bytes, payload: bytes) -> bytes:
    """One frame of ``kind`` (a single byte) around an already-encoded payload."""
    return HEADER.pack(len(payload) + 1) + kind + payload


class FrameReader:
    """Splits a byte stream into frames; feed it what ``os.read`` returned."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield every complete frame body (kind byte first) that ``data`` completes."""
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME or size == 0:
                raise ValueError(f"corrupt frame on a control pipe: length {size}")
            if end - pos - 4 < size:
                break
            yield bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if pos:
            del buf[:pos]


def decode_json(body: bytes) -> dict[str, Any]:
    """Decode a ``J`` frame body."""
    msg = orjson.loads(body[1:])
    if not isinstance(msg, dict):
        raise ValueError(f"control message is not an object: {msg!r}")
    return msg


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (child side)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_frame(fd: int, reader: FrameReader, pending: list[bytes]) -> bytes | None:
    """Blocking read of the next frame body, or None at end of file (child side)."""
    while not pending:
        data = os.read(fd, 65536)
        if not data:
            return None
        pending.extend(reader.feed(data))
    return pending.pop(0)


def utf8_cut(data: bytes | bytearray | memoryview, limit: int) -> int:
    """The largest cut <= ``limit`` that does not split a UTF-8 character of ``data``.

    For text cut into pieces (a line without end, a long print): a cut inside a character would
    show as U+FFFD on both sides.
    """
    if limit >= len(data):
        return len(data)
    cut = limit
    while cut > 0 and limit - cut < 3 and data[cut] & 0xC0 == 0x80:  # a continuation byte
        cut -= 1
    return cut if cut > 0 else limit


# ---------------------------------------------------------------------------------------------
# Exceptions across the pipe


def error_record(exc: BaseException) -> dict[str, Any]:
    """A JSON-able description of ``exc``, with its pickled self when pickle accepts it."""
    tb = "".join(traceback.format_exception(exc))
    record: dict[str, Any] = {
        "t": "error",
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "msg": str(exc),
        "tb": tb,
    }
    try:
        blob = pickling.dumps_to_host(exc)  # a __main__ exception class by name: the host's own
        pickling.loads(blob)  # some exceptions pickle but do not unpickle (required init args)
        record["pickled"] = blob.hex()
    except Exception:  # noqa: BLE001 - any failure just means "send the text only"
        pass
    return record


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child process, as text."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class ChildError(Exception):
    """An exception from a child process whose own class could not be rebuilt here."""

    def __init__(self, type_name: str, msg: str) -> None:
        super().__init__(f"{type_name}: {msg}")
        self.type_name = type_name


def rebuild_error(record: dict[str, Any]) -> BaseException:
    """The exception an ``error`` record describes, its child traceback as ``__cause__``."""
    exc: BaseException | None = None
    blob = record.get("pickled")
    if isinstance(blob, str):
        try:
            loaded = pickling.loads(bytes.fromhex(blob))
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:  # noqa: BLE001 - fall back to the text form
            exc = None
    if exc is None:
        exc = ChildError(str(record.get("type", "Exception")), str(record.get("msg", "")))
    exc.__cause__ = RemoteTraceback(str(record.get("tb", "")))
    return exc


# ---------------------------------------------------------------------------------------------
# Exit statuses


# Exit codes for a process that ended with a status nobody can know. A real status is 0..255 (an
# exit) or negative (the signal that killed it); these lie outside both, so no caller mistakes one
# for an exit code the process chose.
STATUS_REAPED_ELSEWHERE = 1001  # someone else collected it (the host ignores SIGCHLD or reaps all)
STATUS_FORKSERVER_DIED = 1002  # the forkserver that started the process died: its report is lost
UNKNOWN_STATUSES = {
    STATUS_REAPED_ELSEWHERE: (
        "unknown status (collected by someone else: the host ignores SIGCHLD or reaps every child "
        "itself, e.g. os.waitpid(-1) in a thread)"
    ),
    STATUS_FORKSERVER_DIED: (
        "unknown status (the forkserver died, and with it the report of how its children ended; "
        "the processes it started die with it)"
    ),
}


def describe_exit(code: int | None) -> str:
    """A human reading of a multiprocessing-style exit code: ``EXIT(3)``, ``SIGKILL(-9)``.

    The codes in UNKNOWN_STATUSES read as what is known: why the status is unknown.
    """
    if code is None:
        return "still running"
    unknown = UNKNOWN_STATUSES.get(code)
    if unknown is not None:
        return unknown
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{name}({code})"
    return f"EXIT({code})"


def exit_signal(code: int | None) -> str | None:
    """The name of the signal that ended a process, if one did."""
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
