"""The worker process: runs jobs one at a time, read from its pipe, results written back.

Frames (see procman._child.wire): parent -> worker ``P`` + JOB_HEAD(job id, scheduled) + job bytes, or
a JSON ``stop``; worker -> parent a JSON ``ready`` once the initializer ran, then one ``R`` frame per
job: RESULT_HEAD(job id, started, finished, rss kB, status) + payload. ``scheduled`` is the wall-clock
time the job was scheduled for, or 0.0 (see scheduled_time). ``started`` is CLOCK_MONOTONIC, which
Linux shares between processes, so the parent measures lateness against the due time it keeps.

Anything a job raises, SystemExit included, comes back as that job's error and the worker lives on;
only the process dying (segfault, os._exit, a signal) fails the job as WorkerCrashed.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import select
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import pickling
from . import wire as _wire
from .boot import Channel, FdBox, manager_gone
from .explain import explain

JOB_HEAD = struct.Struct("<Qd")
OUT_HEAD = struct.Struct("<QB")  # job id (0: none), stream (1 stdout, 2 stderr)
OUT_MAX = 65536  # bytes of printed text per frame (a longer line goes in pieces)
KIND_OUTPUT = ord("O")
RESULT_HEAD = struct.Struct("<QddqB")
KIND_JOB = ord("P")
STARTED = struct.Struct("<Q")  # a StartedBoard slot: ticket << 1 | (1 once the job's code runs)
KIND_RESULT = ord("R")
OK = 0
ERROR = 1
OK_PLAIN = 2  # OK, and the result is a small number, string, bytes or None: no code to unpickle it
PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes, type(None)})
PLAIN_MAX = 65536  # bytes: a plain result larger than this is unpickled lazily all the same
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- a job's bytes in, its result's bytes out (the parent's half: workers._serialize) -------------

FN_LEN = struct.Struct("<I")
FN_CACHE_MAX = 256  # loaded callables a worker keeps, by their bytes
CACHE_MAX = 65536  # bytes: a callable pickled to more is pickled again at each use, not cached


class ResultNotSent(TypeError):
    """A job's result that cannot be pickled back (the pool raises it as SerializationError)."""


def load_job(
    blob: bytes | memoryview, cache: dict[bytes, Callable[..., Any]] | None = None
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The callable and arguments of a job from dumps_job; callables cached by their bytes."""
    view = memoryview(blob)
    (n,) = FN_LEN.unpack_from(view, 0)
    fn_blob = bytes(view[4 : 4 + n])
    fn = cache.get(fn_blob) if cache is not None else None
    if fn is None:
        fn = pickling.loads(fn_blob)
        if cache is not None and n <= CACHE_MAX:  # a big one would keep its objects alive
            if len(cache) >= FN_CACHE_MAX:
                cache.clear()
            cache[fn_blob] = fn
    args, kwargs = pickling.loads(view[4 + n :])
    return fn, args, kwargs


def dumps_result(value: Any) -> bytes:
    """A result for the wire (the host's ``__main__`` classes by name); ResultNotSent if it can't go."""
    try:
        return pickling.dumps_to_host(value)
    except Exception as exc:
        raise ResultNotSent(explain(value, "the job's result", exc, to_host=True)) from exc


class InitCall:
    """The pool's initializer and its ``initargs``, as each worker gets them.

    The callable is pickled once, at Pool(). The arguments are pickled when this object is: while
    procman starts a forkserver or spawn worker (the process layer pickles the process object
    inside pickling.spawning), as ProcessPoolExecutor hands over its initargs. So they may hold
    what multiprocessing shares only with a process it starts (a Queue, Lock or Event of
    multiprocessing or multiprocess, made in the context of the pool's start method): each worker
    gets their pipes and semaphores as file descriptors of its own start. A forked worker inherits
    this object, arguments and all, and nothing is pickled.
    """

    __slots__ = ("args", "args_blob", "fn_blob")

    def __init__(self, fn_blob: bytes, args: tuple[Any, ...], args_blob: bytes | None = None) -> None:
        self.fn_blob = fn_blob
        self.args = args
        self.args_blob = args_blob  # in a worker: the arguments, loaded by load()

    def __reduce__(self) -> tuple[Any, ...]:
        return (InitCall, (self.fn_blob, (), pickling.dumps_at_start(self.args)))

    def load(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The initializer and its arguments (in the worker: so that errors are the initializer's)."""
        fn = pickling.loads(self.fn_blob)
        args = self.args if self.args_blob is None else pickling.loads(self.args_blob)
        return fn, tuple(args)


# The running job's scheduled time (epoch seconds; 0.0: none), from its frame's head.
_scheduled = [0.0]


def scheduled_time() -> float | None:
    """In a worker: the time the running job was scheduled for (a schedule's fire time, the time
    given to submit_at), or None (a plain submit, or not in a worker)."""
    t = _scheduled[0]
    return t if t else None


def job_frame(job_id: int, scheduled: float, blob: bytes) -> bytes:
    return _wire.encode_raw(b"P", JOB_HEAD.pack(job_id, scheduled) + blob)


def rss_kb() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_KB


class JobOutput(io.TextIOBase):
    """The worker's ``sys.stdout``/``sys.stderr``: complete lines go to the parent tagged with the
    running job's id (one ``O`` frame: OUT_HEAD + utf-8 lines), so that what a job prints is shown
    under the job's name, in order with its result. Writes to the file descriptors themselves (C
    code, programs the job starts) still go to the worker's log pipes.
    """

    def __init__(self, chan: Channel, stream: int, fd: int) -> None:
        super().__init__()
        self._chan = chan
        self._stream = stream
        self._fd = fd
        self._buf: list[str] = []
        self._size = 0  # characters in _buf
        self.job_id = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if "\n" not in text:
            self._buf.append(text)
            self._size += len(text)
            if self._size > OUT_MAX:
                self.end_line()
            return len(text)
        head, _, rest = text.rpartition("\n")
        self._buf.append(head)
        self._send("".join(self._buf))
        self._buf = [rest] if rest else []
        self._size = len(rest)
        return len(text)

    def end_line(self) -> None:
        """Send a partial line (the job ended, or the line grew past OUT_MAX)."""
        if self._buf:
            self._send("".join(self._buf))
            self._buf = []
            self._size = 0

    def _send(self, lines: str) -> None:
        data = memoryview(lines.encode("utf-8", "replace"))  # slices of it copy nothing
        head = OUT_HEAD.pack(self.job_id, self._stream)
        while data:
            cut = _wire.utf8_cut(data, OUT_MAX)  # pieces of a long line never split a character
            self._chan.send_raw(_wire.encode_raw(b"O", head + data[:cut]))
            data = data[cut:]


class StartedBoard:
    """Shared memory where each worker marks the job it starts: one 8-byte slot per live worker.

    When a worker dies, the pool reads its slot to tell the job it ran (which failed with it) from
    a job that only sat in its pipe (which never started, and goes to another worker). A job
    whose worker died while unpickling it never ran either: it goes to another worker once, and
    fails only if that one dies loading it too (then its arguments are what kills workers). A
    memfd mapped by the pool and by every worker: a store to it costs no system call, and it
    outlives the worker that wrote it.
    """

    SLOTS = 4096

    def __init__(self) -> None:
        self.fd = os.memfd_create("procman-started", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, STARTED.size * self.SLOTS)
        self.map = mmap.mmap(self.fd, STARTED.size * self.SLOTS)
        self.free = list(range(self.SLOTS - 1, -1, -1))

    def take(self) -> int:
        """A cleared slot for a new worker, or -1 when all are taken (then every death blames)."""
        if not self.free:
            return -1
        slot = self.free.pop()
        STARTED.pack_into(self.map, slot * STARTED.size, 0)
        return slot

    def read(self, slot: int) -> int | None:
        """The mark of the worker in ``slot``: ``ticket << 1``, ``| 1`` once the job's code runs
        (0: no job yet); None if it had no slot."""
        if slot < 0 or self.map.closed:
            return None
        value: int = STARTED.unpack_from(self.map, slot * STARTED.size)[0]
        return value

    def give_back(self, slot: int) -> None:
        if slot >= 0:
            self.free.append(slot)

    def close(self) -> None:
        if not self.map.closed:
            self.map.close()
            os.close(self.fd)


class JobInbox:
    """The frames the pool sent this worker, taken one at a time by its main loop.

    Jobs the pool handed ahead (held behind the running one) can be taken back by the recall
    thread while a long job runs: under ``lock`` a frame is either taken to run or given back,
    never both.
    """

    def __init__(self, rfd: int) -> None:
        self.rfd = rfd
        os.set_blocking(rfd, False)
        self.reader = _wire.FrameReader()
        self.pending: deque[bytes] = deque()
        self.lock = threading.Lock()
        self.eof = False
        self.poller = select.poll()
        self.poller.register(rfd, select.POLLIN)

    def _fill(self) -> None:
        """Read what the pipe holds now (under ``lock``)."""
        while not self.eof:
            try:
                data = os.read(self.rfd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                return
            self.pending.extend(self.reader.feed(data))

    def next(self) -> bytes | None:
        """The next frame body, waiting for one; None once the pool closed the pipe."""
        while True:
            with self.lock:
                if not self.pending:
                    self._fill()
                if self.pending:
                    return self.pending.popleft()
                if self.eof:
                    return None
            self.poller.poll()

    def recall(self) -> list[int]:
        """Give back every job not started yet: their tickets."""
        with self.lock:
            self._fill()
            kept: deque[bytes] = deque()
            tickets = []
            for body in self.pending:
                if body[0] == KIND_JOB:
                    tickets.append(JOB_HEAD.unpack_from(body, 1)[0])
                else:
                    kept.append(body)
            self.pending = kept
        return tickets


def _answer_recalls(fd: int, inbox: JobInbox, chan: Channel) -> None:
    """The recall thread: each byte from the pool asks for the jobs not started yet."""
    while True:
        try:
            data = os.read(fd, 512)
        except OSError:
            return
        if not data:  # the pool is gone
            return
        chan.send({"t": "recalled", "tickets": inbox.recall()})


def _map_board(board: FdBox | None, slot: int) -> tuple[mmap.mmap | None, int]:
    if board is None or slot < 0:
        return None, -1
    try:
        mapped = mmap.mmap(board.fd, STARTED.size * StartedBoard.SLOTS)
    finally:
        os.close(board.fd)
    return mapped, slot * STARTED.size


def worker_main(
    init: InitCall | None,
    measure_rss: bool,
    board: FdBox | None,
    slot: int,
    recall: FdBox | None,
    chan: Channel,
) -> int:
    started_map, started_at = _map_board(board, slot)
    outs = (JobOutput(chan, 1, 1), JobOutput(chan, 2, 2))
    sys.stdout, sys.stderr = outs
    if init is not None:
        try:
            fn, args = init.load()
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported, and this worker ends before "ready"
            for out in outs:
                out.end_line()
            record = _wire.error_record(exc)
            record["stage"] = "initializer"
            chan.send(record)
            return 1
        for out in outs:
            out.end_line()
    inbox = JobInbox(chan.rfd)
    if recall is not None:
        threading.Thread(target=_answer_recalls, args=(recall.fd, inbox, chan), daemon=True).start()
    chan.send({"t": "ready"})
    fn_cache: dict[bytes, Any] = {}
    send = chan.send_raw
    while True:
        try:
            body = inbox.next()
        except OSError:
            body = None
        if body is None:
            manager_gone()
            return 1
        if body[0] == _wire.KIND_JSON:
            if _wire.decode_json(body).get("t") == "stop":
                return 0
            continue
        job_id, _scheduled[0] = JOB_HEAD.unpack_from(body, 1)
        if started_map is not None:  # taken: a death from here on is while loading this job
            STARTED.pack_into(started_map, started_at, job_id << 1)
        for out in outs:
            out.job_id = job_id
        started = time.monotonic()
        status, payload = run_job(
            memoryview(body)[1 + JOB_HEAD.size :], fn_cache, started_map, started_at, job_id
        )
        del body  # the job's bytes, arguments and result are gone before the next job comes
        finished = time.monotonic()
        for out in outs:
            out.end_line()
            out.job_id = 0
        rss = rss_kb() if measure_rss else 0
        send(_wire.encode_raw(b"R", RESULT_HEAD.pack(job_id, started, finished, rss, status) + payload))
        del payload


def run_job(
    job: memoryview, fn_cache: dict[bytes, Any], board: mmap.mmap | None, at: int, ticket: int
) -> tuple[int, bytes]:
    """Run one job: its status and its pickled result or error.

    Its slot on the StartedBoard says ``ticket << 1`` while it loads and ``ticket << 1 | 1``
    once its code runs (see StartedBoard).

    Its arguments and result die when this returns, before the result goes back: an argument
    whose ``__del__`` kills the process fails this job, never the next one.
    """
    try:
        fn, args, kwargs = load_job(job, fn_cache)
        if board is not None:  # a death from here on is this job's
            STARTED.pack_into(board, at, ticket << 1 | 1)
        value = fn(*args, **kwargs)
        payload = dumps_result(value)
        plain = type(value) in PLAIN_TYPES and len(payload) <= PLAIN_MAX
        return OK_PLAIN if plain else OK, payload
    except BaseException as exc:  # noqa: BLE001 - every job error goes back to its future
        tb = exc.__traceback__
        if tb is not None and tb.tb_next is not None:  # start at the job, not at this function
            exc.__traceback__ = tb.tb_next
        return ERROR, pickle.dumps(_wire.error_record(exc), protocol=5)
