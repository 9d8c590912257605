"""Workers on a Dask distributed cluster: the second backend of the worker seam (workers._backend).

A job due goes to Dask as one task, ``run(job bytes, stamp)`` of procman._child.dask_task, under a
key of its own (never ``pure``, no Dask retries). A "worker" of the dispatcher is a slot here, one
per thread of the cluster: the pool hands a job to a free slot, so Dask never holds more of its
jobs than it has threads, and the cluster's scheduler, set to ``worker-saturation`` 1.0, never
queues one on a worker behind another. With ``allowed-failures`` 0 a Dask worker that dies fails
the job it ran, and only that one, as WorkerCrashed naming the worker's address.

Everything Dask here runs on the pool's I/O loop: the asynchronous Client (workers._dask), one
coroutine per job in flight awaiting its Dask future (held until its outcome is delivered: Dask
forgets a task whose futures are gone), and one that follows the cluster's threads.

A job that times out or is cancelled while it runs fails at once; then the Dask worker running it
is killed (procman._child.dask_task.kill_if_running), and its nanny starts another, which takes
a second or two. Until the cluster counts it again the pool has one slot fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import pickle
import re
import signal
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

from procman._child import dask_task
from procman._child import wire as _wire
from procman._child.worker_loop import ERROR
from procman._proc.events import EventDispatcher
from procman._proc.loop import IOThread

from ._backend import BackendReports, WorkerReports
from ._checks import default_workers
from ._dask import HOST_STOP, RPC_TIMEOUT, DaskBackend, DaskConnection, import_distributed
from ._errors import DaskBackendError

CAPACITY_POLL = 0.5  # seconds between two looks at the cluster's threads
LOST_AFTER = 30.0  # seconds without an answer from the scheduler before the pool is broken
FRAME_HEAD = struct.Struct("<QH")  # ticket, length of the job's name
_KEY_NAME = re.compile(r"[^A-Za-z0-9_.<>]+")


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class DaskSlot:
    """One thread's worth of the cluster, as the dispatcher drives a worker (a WorkerHandle)."""

    def __init__(self, backend: DaskWorkers, reports: WorkerReports) -> None:
        self.backend = backend
        self.reports = reports
        self.current: tuple[int, str, Any] | None = None  # ticket, Dask key, Dask future
        self.deferred: bytes | None = None  # its job, held back while a worker is being killed
        self.where = ""  # the address of the Dask worker that last failed it
        self.dead = False
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return not self.dead

    @property
    def label(self) -> str:
        return f"Dask worker {self.where}" if self.where else "a Dask worker"

    def send(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self.backend.submit(self, frame)

    def send_now(self, frame: bytes) -> bool:
        return False  # the Client lives on the I/O loop: every job goes through it

    def recall(self) -> bool:
        return False

    def stop(self) -> None:
        if self.current is None and self.deferred is None:
            self.end(0, None, None)
        else:
            self.stopping = True

    def kill(self) -> None:
        if self.dead:
            return
        current, self.current = self.current, None
        started = None
        if current is not None:
            started = current[0] << 1 | 1
            self.backend.abandon(current[1], current[2])
        elif self.deferred is not None:  # never sent: nothing to end in Dask
            started = FRAME_HEAD.unpack_from(self.deferred)[0] << 1 | 1
            self.deferred = None
        self.end(-signal.SIGKILL, started, "killed by the pool")

    def force_close(self) -> None:
        self.current = self.deferred = None
        self.end(-signal.SIGKILL, None, "closed with the pool")

    def end(self, code: int, started: int | None, reason: str | None) -> None:
        if not self.dead:
            self.dead = True
            self.backend.slots.discard(self)
            self.backend.loop.call_soon(self.reports.exited, code, started, reason)


class DaskWorkers:
    """A pool's backend on Dask (a WorkerBackend): its Client, its slots, its local cluster."""

    can_recall = False
    # One Dask task per slot and no more slots than threads: Dask assigns a task beyond the free
    # threads to a busy worker's own queue (only large groups of tasks wait on the scheduler),
    # where that worker's death would fail it too (KilledWorker) though it never ran.
    prefetch = False

    def __init__(self, conn: DaskConnection, max_workers: int | None) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.client = conn.client
        self.address = conn.address
        self.stamp = conn.stamp
        self.max_workers = max_workers
        self.token = uuid.uuid4().hex[:12]
        self.held: set[asyncio.Task[None]] = set()
        self.ending: set[asyncio.Task[None]] = set()  # end_job: awaited by wind_down, never cut short
        self.deferred: list[tuple[DaskSlot, bytes]] = []  # jobs handed meanwhile: sent once none is
        self.watcher: asyncio.Task[None] | None = None
        self.slots: set[DaskSlot] = set()  # the live ones
        self.threads = 0
        self.reports: BackendReports | None = None
        self.closed = False

    # -- the seam ------------------------------------------------------------------------------

    def frame(self, ticket: int, scheduled: float, blob: bytes, name: str) -> bytes:
        head = _KEY_NAME.sub("_", name)[:60].encode()
        return FRAME_HEAD.pack(ticket, len(head)) + head + blob

    def begin(self, reports: BackendReports) -> None:
        self.reports = reports
        self.watcher = self.loop.create_task(self.follow_threads(reports))

    def start(self, index: int, reports: WorkerReports) -> DaskSlot:
        slot = DaskSlot(self, reports)
        self.slots.add(slot)
        self.loop.call_soon(reports.ready)
        return slot

    async def wind_down(self) -> None:
        self.closed = True
        if self.watcher is not None:
            self.watcher.cancel()
        if self.ending:  # a worker being killed for a job must be gone before the client goes
            await asyncio.wait(list(self.ending), timeout=RPC_TIMEOUT * 3)
        if self.held:  # outcomes on their way (abandoned jobs') settle: a gather from a worker cut
            await asyncio.wait(list(self.held), timeout=1.0)  # short would leave its socket open
        cancelled = [*self.held, *([self.watcher] if self.watcher is not None else [])]
        for task in cancelled:
            task.cancel()
        if cancelled:  # let them end here, before the loop stops (else: "destroyed but pending")
            await asyncio.wait(cancelled, timeout=RPC_TIMEOUT)
        await self.conn.close()

    def close(self) -> None:
        self.conn.force_close()

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, slot: DaskSlot, frame: bytes) -> None:
        if self.ending:  # a worker is being killed for a job: see end_job
            slot.deferred = frame
            self.deferred.append((slot, frame))
            return
        ticket, n = FRAME_HEAD.unpack_from(frame)
        start = FRAME_HEAD.size + n
        key = f"{frame[FRAME_HEAD.size : start].decode()}-{self.token}-{ticket}"
        try:
            future = self.client.submit(
                dask_task.run, frame[start:], self.stamp, key=key, pure=False, retries=0
            )
        except Exception as exc:  # noqa: BLE001 - e.g. the client lost its scheduler: this job fails
            self.loop.call_soon(self.fail, slot, ticket, f"could not hand the job to Dask: {_said(exc)}")
            return
        slot.current = (ticket, key, future)
        task = self.loop.create_task(self.follow(slot, ticket, future))
        self.held.add(task)
        task.add_done_callback(self.held.discard)

    async def follow(self, slot: DaskSlot, ticket: int, future: Any) -> None:
        """Await one job's Dask future and report its outcome to its slot's dispatcher."""
        distributed = import_distributed()
        try:
            data = await future
        except asyncio.CancelledError:
            if self.closed or slot.current is None or slot.current[2] is not future:
                raise  # the pool is closing, or the job was abandoned: nobody waits for it
            data = None
            error: BaseException | None = DaskBackendError("Dask cancelled the job's task")
        except distributed.KilledWorker as exc:
            data, error = None, exc
        except Exception as exc:  # noqa: BLE001 - the task erred in Dask, not in the job
            data, error = None, exc
        else:
            error = None
        current = slot.current
        if current is None or current[2] is not future:  # abandoned meanwhile (timeout, cancel)
            return
        slot.current = None
        if isinstance(error, distributed.KilledWorker):
            last = getattr(error, "last_worker", None)
            slot.where = str(getattr(last, "address", "") or "")
            slot.end(
                -signal.SIGKILL,
                ticket << 1 | 1,
                "its process died while it ran the job (Dask's KilledWorker; a nanny starts another)",
            )
            self.look_again()
            return
        reports = slot.reports
        if error is not None or not isinstance(data, bytes):
            why = error or TypeError(f"the task returned {type(data).__name__}, not the job's bytes")
            self.fail(slot, ticket, f"Dask did not return the job's outcome: {_said(why)}")
        else:
            started, finished, status, n_out, n_err = dask_task.RESULT_HEAD.unpack_from(data)
            at = dask_task.RESULT_HEAD.size
            if n_out:
                reports.output(ticket, "stdout", data[at : at + n_out].decode("utf-8", "replace"))
            if n_err:
                reports.output(
                    ticket, "stderr", data[at + n_out : at + n_out + n_err].decode("utf-8", "replace")
                )
            shift = time.time() - time.monotonic()  # the worker's wall clock onto our monotonic one
            payload_view = memoryview(data)[at + n_out + n_err :]
            reports.result(ticket, started - shift, finished - shift, 0, status, payload_view)
        if slot.stopping and slot.current is None:
            slot.end(0, None, None)

    def fail(self, slot: DaskSlot, ticket: int, message: str) -> None:
        """The job fails with a DaskBackendError (its slot goes on)."""
        payload = pickle.dumps(_wire.error_record(DaskBackendError(message)), protocol=5)
        now = time.monotonic()
        slot.reports.result(ticket, now, now, 0, ERROR, memoryview(payload))
        if slot.stopping and slot.current is None:
            slot.end(0, None, None)

    def abandon(self, key: str, future: Any) -> None:
        """A job that timed out or was cancelled: end it where it runs, then forget it."""
        task = self.loop.create_task(self.end_job(key, future))
        self.ending.add(task)
        task.add_done_callback(self.ended)

    def ended(self, task: asyncio.Task[None]) -> None:
        self.ending.discard(task)
        if not self.ending and not self.closed:
            deferred, self.deferred = self.deferred, []
            for slot, frame in deferred:
                if slot.deferred is frame:
                    slot.deferred = None
                    self.submit(slot, frame)

    async def end_job(self, key: str, future: Any) -> None:
        """Kill the Dask worker still running ``key``, then release the task.

        In that order, and the task released only once the scheduler dropped the dead worker:
        released earlier, the worker's thread would look free to the scheduler, which could hand
        it another job in the moment before it learns of the death, and fail that job with it.
        Until then the jobs handed to the pool's slots wait here (submit): sent meanwhile, one could
        be queued on the dying worker (on a small cluster, its only place) and fail with it.
        """
        client = self.client
        with contextlib.suppress(Exception):
            where = await asyncio.wait_for(client.processing(), RPC_TIMEOUT)
            holders = [addr for addr, keys in where.items() if key in keys]
            if holders:
                said = await asyncio.wait_for(
                    client.run(dask_task.kill_if_running, key, workers=holders, on_error="return"),
                    RPC_TIMEOUT,
                )
                killed = [addr for addr, answer in said.items() if answer is not False]
                deadline = time.monotonic() + RPC_TIMEOUT
                while killed and time.monotonic() < deadline:
                    alive = await asyncio.wait_for(client.nthreads(), RPC_TIMEOUT)
                    killed = [addr for addr in killed if addr in alive]
                    if killed:
                        await asyncio.sleep(0.02)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.cancel([future], force=True), RPC_TIMEOUT)
        self.look_again()

    # -- capacity ----------------------------------------------------------------------------

    def look_again(self) -> None:
        """Look at the cluster's threads now (a worker died): do not wait for the next poll."""
        if self.reports is not None and not self.closed:
            task = self.loop.create_task(self.count_threads(self.reports))
            self.held.add(task)
            task.add_done_callback(self.held.discard)

    async def count_threads(self, reports: BackendReports) -> None:
        status = self.client.status
        if status != "running":  # reconnecting: a call would wait for it, up to its own timeout
            raise ConnectionError(f"the Dask client is {status}")
        threads = await asyncio.wait_for(self.client.nthreads(), RPC_TIMEOUT)
        n = sum(threads.values())
        if self.max_workers is not None:
            n = min(n, self.max_workers)
        if n != self.threads and not self.closed:
            self.threads = n
            reports.capacity(n)

    async def follow_threads(self, reports: BackendReports) -> None:
        """As workers join and leave, the pool's capacity follows the cluster's threads."""
        failing_since = math.inf
        for _ in itertools.count():
            try:
                await self.count_threads(reports)
                failing_since = math.inf
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the scheduler is away: wait, then give up
                now = time.monotonic()
                failing_since = min(failing_since, now)
                if now - failing_since > LOST_AFTER:
                    gone = f"lost the Dask scheduler at {self.address}: no answer for {LOST_AFTER:g}s"
                    reports.lost(DaskBackendError(f"{gone} ({type(exc).__name__}: {exc})"))
                    for slot in list(self.slots):  # their jobs' outcomes would never come
                        current, slot.current = slot.current, None
                        slot.end(-signal.SIGKILL, current[0] << 1 | 1 if current else None, gone)
                    return
            await asyncio.sleep(CAPACITY_POLL)


def connect_dask(
    spec: DaskBackend,
    io: IOThread,
    events: EventDispatcher,
    name: str,
    start_method: str,
    max_workers: int | None,
) -> DaskWorkers:
    """Connect (and start the local cluster) from Pool(): refused or failed, nothing is left behind."""
    n_workers = spec.n_workers or max_workers or default_workers()
    conn = DaskConnection(spec, io.loop, name=name, start_method=start_method, n_workers=n_workers)
    try:
        io.call(conn.connect(), spec.connect_timeout + RPC_TIMEOUT * 2, "connecting to Dask")
    except BaseException:
        with contextlib.suppress(Exception):
            io.call(conn.close(), HOST_STOP + 5.0, "closing the Dask connection")
        io.close()
        events.close()
        conn.force_close()
        raise
    return DaskWorkers(conn, max_workers)
