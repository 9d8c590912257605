"""Workers as local processes: the default backend of the worker seam (workers._backend).

Each worker is a procman child (the same bootstrap as a daemon's: parent-death signal, process
group, log capture, pipe-EOF exit) running procman._child.worker_loop. Job frames go down its
control pipe; result, output and control frames come back up it. All workers of a pool share one
StartedBoard, a slot each, so that when one dies the dispatcher knows whether the job in hand had
started; a worker of a pool that does not recycle workers also gets a recall pipe.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence

from procman._child import wire
from procman._child.boot import FdBox
from procman._child.worker_loop import (
    KIND_OUTPUT,
    KIND_RESULT,
    OUT_HEAD,
    RESULT_HEAD,
    InitCall,
    StartedBoard,
    job_frame,
    worker_main,
)
from procman._proc.child import Child

from ._backend import BackendReports, WorkerReports


class LocalWorker:
    """One worker process (a WorkerHandle)."""

    def __init__(self, backend: LocalBackend, reports: WorkerReports, slot: int, recall_w: int) -> None:
        self.child: Child | None = None
        self._backend = backend
        self._reports = reports
        self._slot = slot  # its slot on the StartedBoard
        self._recall_w = recall_w  # a byte written here asks for the jobs not started yet

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive

    @property
    def label(self) -> str:
        return f"pid {self.pid}"

    def send(self, frames: Sequence[bytes]) -> None:
        assert self.child is not None
        self.child.send(frames[0] if len(frames) == 1 else b"".join(frames))

    def send_now(self, frame: bytes) -> bool:
        assert self.child is not None
        return self.child.send_now(frame)

    def recall(self) -> bool:
        if self._recall_w < 0:
            return False
        try:
            os.write(self._recall_w, b"r")
        except OSError:  # it is dying: its exit puts the jobs back in line
            return False
        return True

    def stop(self) -> None:
        if self.child is not None:
            self.child.send(wire.encode_json({"t": "stop"}))

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def force_close(self) -> None:
        if self.child is not None:
            self.child.force_close()

    def close_recall(self) -> None:
        if self._recall_w >= 0:
            os.close(self._recall_w)
            self._recall_w = -1

    # -- what the child's pipes bring (on the loop) -------------------------------------------

    def on_frame(self, body: bytes) -> None:
        kind = body[0]
        reports = self._reports
        if kind == KIND_RESULT:
            ticket, started, finished, rss, status = RESULT_HEAD.unpack_from(body, 1)
            reports.result(ticket, started, finished, rss, status, memoryview(body)[1 + RESULT_HEAD.size :])
        elif kind == KIND_OUTPUT:
            ticket, stream = OUT_HEAD.unpack_from(body, 1)
            text = bytes(body[1 + OUT_HEAD.size :]).decode("utf-8", "replace")
            reports.output(ticket, "stderr" if stream == 2 else "stdout", text)
        elif kind == wire.KIND_JSON:
            msg = wire.decode_json(body)
            t = msg.get("t")
            if t == "ready":
                reports.ready()
            elif t == "recalled":
                reports.recalled(msg.get("tickets") or ())
            elif t == "error":
                reports.start_error(wire.rebuild_error(msg), str(msg.get("stage", "")))

    def on_exit(self, code: int) -> None:
        board = self._backend.board
        started = board.read(self._slot)
        board.give_back(self._slot)
        self.close_recall()
        self._reports.exited(code, started)


class LocalBackend:
    """Starts a pool's workers as local processes (a WorkerBackend)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        start_method: str,
        init: InitCall | None,
        measure_rss: bool,
        can_recall: bool,
        max_workers: int,
    ) -> None:
        self.loop = loop
        self.name = name
        self.start_method = start_method
        self.init = init
        self.measure_rss = measure_rss
        self.can_recall = can_recall  # a pool that recycles workers never hands jobs ahead
        self.max_workers = max_workers
        self.board = StartedBoard()

    prefetch = True

    def frame(self, ticket: int, scheduled: float, blob: bytes, name: str) -> bytes:
        return job_frame(ticket, scheduled, blob)

    def begin(self, reports: BackendReports) -> None:
        reports.capacity(self.max_workers)

    def start(self, index: int, reports: WorkerReports) -> LocalWorker:
        board = self.board
        slot = board.take()
        recall_r = recall_w = -1
        if self.can_recall:
            try:
                recall_r, recall_w = os.pipe2(os.O_CLOEXEC)
            except OSError:
                board.give_back(slot)
                raise
            os.set_blocking(recall_w, False)
        worker = LocalWorker(self, reports, slot, recall_w)
        child = Child(
            self.loop,
            self.start_method,
            functools.partial(
                worker_main,
                self.init,
                self.measure_rss,
                FdBox(board.fd),
                slot,
                FdBox(recall_r) if recall_r >= 0 else None,
            ),
            name="worker",
            title=f"procman: worker {index} ({self.name})",
            on_frame=worker.on_frame,
            on_line=reports.line,
            on_exit=worker.on_exit,
            options={"reader": False},
        )
        try:
            child.start()
        except BaseException:
            board.give_back(slot)
            worker.close_recall()
            raise
        finally:
            if recall_r >= 0:
                os.close(recall_r)
        worker.child = child
        return worker

    async def wind_down(self) -> None:
        pass

    def close(self) -> None:
        self.board.close()
