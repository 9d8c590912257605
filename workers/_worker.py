"""The worker process: runs jobs one at a time, read from its pipe, results written back.

Frames (see procman._wire): parent -> worker ``P`` + JOB_HEAD(job id, due) + job bytes, or a JSON
``stop``; worker -> parent a JSON ``ready`` once the initializer ran, then one ``R`` frame per job:
RESULT_HEAD(job id, started, finished, rss kB, status) + payload. ``started`` and ``due`` are both
CLOCK_MONOTONIC, which Linux shares between processes, so lateness is measured where it happens.

Anything a job raises, SystemExit included, comes back as that job's error and the worker lives on;
only the process dying (segfault, os._exit, a signal) fails the job as WorkerCrashed.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
from typing import Any

from procman import _wire
from procman._child import Channel, manager_gone

from ._serialize import dumps_result, load_job

JOB_HEAD = struct.Struct("<Qd")
RESULT_HEAD = struct.Struct("<QddqB")
KIND_RESULT = ord("R")
OK = 0
ERROR = 1
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def job_frame(job_id: int, due: float, blob: bytes) -> bytes:
    return _wire.encode_raw(b"P", JOB_HEAD.pack(job_id, due) + blob)


def rss_kb() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_KB


def worker_main(init_blob: bytes | None, measure_rss: bool, chan: Channel) -> int:
    if init_blob is not None:
        fn, args, kwargs = load_job(init_blob)
        fn(*args, **kwargs)  # an exception here ends the worker before "ready"
    chan.send({"t": "ready"})
    reader = _wire.FrameReader()
    pending: list[bytes] = []
    fn_cache: dict[bytes, Any] = {}
    rfd = chan.rfd
    send = chan.send_raw
    while True:
        try:
            body = _wire.read_frame(rfd, reader, pending)
        except OSError:
            body = None
        if body is None:
            manager_gone()
            return 1
        if body[0] == _wire.KIND_JSON:
            if _wire.decode_json(body).get("t") == "stop":
                return 0
            continue
        job_id, _due = JOB_HEAD.unpack_from(body, 1)
        started = time.monotonic()
        try:
            fn, args, kwargs = load_job(memoryview(body)[1 + JOB_HEAD.size :], fn_cache)
            payload = dumps_result(fn(*args, **kwargs))
            status = OK
        except BaseException as exc:  # noqa: BLE001 - every job error goes back to its future
            payload = pickle.dumps(_wire.error_record(exc), protocol=5)
            status = ERROR
        finished = time.monotonic()
        rss = rss_kb() if measure_rss else 0
        send(_wire.encode_raw(b"R", RESULT_HEAD.pack(job_id, started, finished, rss, status) + payload))
