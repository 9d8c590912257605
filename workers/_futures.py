"""JobFuture: a concurrent.futures.Future that can cancel a running job and can be awaited."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures._base import (  # the states are not public; Future itself uses them
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any, TypeVar

from procman._child import wire as _wire
from procman._child.worker_loop import ResultNotSent

from ._checks import check_count, check_seconds
from ._errors import PoolFull, SerializationError
from ._serialize import loads

T = TypeVar("T")
_LOG = logging.getLogger("concurrent.futures")  # where Future logs a failing done-callback
_MAKE_CONDITION = threading.Lock()


class Outcome:
    """A job's result or error as its worker sent it, unpickled on first use by whoever uses it.

    The pool's I/O thread never unpickles what a job returned or raised: a result slow to
    unpickle would stall every other job and timer, and one whose unpickling runs hostile code
    (``os._exit``) would run it there. It is unpickled in the thread that asks for it
    (``result()``, ``exception()``, an event hook, ``Schedule.last_result``), once.
    """

    __slots__ = ("_error", "_lock", "_name", "_payload", "_value", "is_error")

    def __init__(self, payload: bytes | memoryview | None, is_error: bool, name: str = "") -> None:
        self._payload = payload
        self.is_error = is_error
        self._name = name
        self._value: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock() if payload is not None else None

    @classmethod
    def known(cls, value: Any = None, error: BaseException | None = None) -> Outcome:
        """An outcome that needs no unpickling (a timeout, a crash, a value made here)."""
        outcome = cls(None, error is not None)
        outcome._value, outcome._error = value, error
        return outcome

    def get(self) -> tuple[Any, BaseException | None]:
        """(value, None) or (None, error), unpickled on the first call."""
        if self._payload is not None:
            assert self._lock is not None
            with self._lock:
                payload = self._payload
                if payload is not None:
                    self._decode(payload)
                    self._payload = None
        return self._value, self._error

    def _decode(self, payload: bytes | memoryview) -> None:
        what = "error" if self.is_error else "result"
        try:
            if self.is_error:
                error = _wire.rebuild_error(pickle.loads(payload))
                if isinstance(error, ResultNotSent):  # the worker's name for it
                    sent, error = error, SerializationError(str(error))
                    error.__cause__ = sent.__cause__
                self._error = error
            else:
                self._value = loads(payload)
        except BaseException as exc:  # noqa: BLE001 - becomes the job's error, with its cause
            err = SerializationError(f"the {what} of job {self._name!r} could not be unpickled: {exc!r}")
            err.__cause__ = exc
            self._value, self._error = None, err


class JobFuture(Future[T]):
    """The future of one job.

    Unlike the standard library's, ``cancel()`` also works on a running job: its worker is killed
    and replaced (the job cannot be interrupted any other way), and the future ends cancelled. It
    is awaitable from asyncio: ``result = await pool.submit(fn)``.
    """

    _kill_running: Callable[[], None] | None = None

    def __init__(self) -> None:
        # What Future.__init__ sets, minus the Condition and the two lists: those are made on first
        # use (see below). A pool holding 100,000 timed jobs would otherwise make 300,000 objects
        # for jobs nobody waits on yet, and the cyclic GC would walk them again and again.
        self._state = PENDING
        self._outcome: Outcome | None = None

    # Future reads and writes _result and _exception; here they come from the Outcome, unpickled
    # on first read, in the reading thread, once.
    @property
    def _result(self) -> Any:
        outcome = self._outcome
        if outcome is None:
            return None
        return outcome._value if outcome._payload is None else outcome.get()[0]

    @_result.setter
    def _result(self, value: Any) -> None:
        self._outcome = Outcome.known(value)

    @property
    def _exception(self) -> BaseException | None:
        outcome = self._outcome
        if outcome is None:
            return None
        return outcome._error if outcome._payload is None else outcome.get()[1]

    @_exception.setter
    def _exception(self, error: BaseException | None) -> None:
        self._outcome = Outcome.known(None, error)

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters: list[Any] | None = self.__dict__.get("_waiter_list")
        return waiters if waiters is not None else self.__dict__.setdefault("_waiter_list", [])

    @property
    def _done_callbacks(self) -> list[Callable[[Future[T]], object]]:
        cbs: list[Callable[[Future[T]], object]] | None = self.__dict__.get("_callback_list")
        return cbs if cbs is not None else self.__dict__.setdefault("_callback_list", [])

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        """The future's Condition, made on first use (it costs more than the rest of a submit)."""
        cond: threading.Condition | None = self.__dict__.get("_cond")
        if cond is None:
            with _MAKE_CONDITION:
                cond = self.__dict__.get("_cond")
                if cond is None:
                    cond = self.__dict__["_cond"] = threading.Condition()
        return cond

    def cancel(self) -> bool:
        with self._condition:
            state = self._state
            if state == PENDING or (state == RUNNING and self._kill_running is not None):
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
                kill = self._kill_running if state == RUNNING else None
            else:
                return super().cancel()
        if kill is not None:
            kill()
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """As concurrent.futures documents: False if the future was cancelled, else RUNNING.

        cancel() here notifies waiters at once (so ``wait()``/``as_completed()`` see a cancelled
        job without waiting for the pool to reach it), which leaves the state the stdlib method
        only expects after its own notification: a cancelled future answers False, not an error.
        """
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                self._state = CANCELLED_AND_NOTIFIED
                return False
        return super().set_running_or_notify_cancel()

    def _try_start(self) -> bool:
        """PENDING -> RUNNING; False if it was cancelled meanwhile (never raises)."""
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
                return True
            return False

    def _unstart(self) -> None:
        """RUNNING -> PENDING, for a hand-off that did not happen."""
        with self._condition:
            if self._state == RUNNING:
                self._state = PENDING

    def _resolve(self, value: Any = None, exc: BaseException | None = None) -> None:
        """Set a value or an error made here (see _settle)."""
        self._settle(Outcome.known(value, exc))

    def _settle(self, outcome: Outcome) -> None:
        """Set the outcome unless the future was cancelled (or resolved) meanwhile.

        What set_result / set_exception do, minus the exception for a lost race and the wake-up
        call when nobody waits: this runs once per job on the pool's I/O thread.
        """
        cond = self._condition
        with cond:
            if self._state not in (PENDING, RUNNING):
                return
            waiters = self.__dict__.get("_waiter_list") or ()
            self._outcome = outcome
            self._state = FINISHED
            if outcome.is_error:
                for waiter in waiters:
                    waiter.add_exception(self)
            else:
                for waiter in waiters:
                    waiter.add_result(self)
            if self._kill_running is not None:
                self._kill_running = None  # it refers to the job, which refers to this future
            if cond._waiters:  # type: ignore[attr-defined]  # threading.Condition's own list
                cond.notify_all()
        if self.__dict__.get("_callback_list"):
            self._invoke_callbacks()

    def _invoke_callbacks(self) -> None:
        """As Future's, but a callback raising SystemExit (or any BaseException) on the pool's
        thread is logged like any error instead of ending that thread (and with it the pool)."""
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException as exc:
                if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
                    raise  # Ctrl-C in the caller's own thread (cancel()) stays the caller's
                _LOG.exception("exception calling callback for %r", self)

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()


def _result_or_cancel(fut: JobFuture[T], timeout: float | None) -> T:
    try:
        return fut.result(timeout)
    except BaseException:  # timed out or interrupted: that job goes too
        fut.cancel()
        raise


def results_in_order(
    pending: deque[JobFuture[T]], more: Iterator[JobFuture[T]] | None, deadline: float | None
) -> Iterator[T]:
    """``Executor.map``'s results: in order, each awaited until ``deadline`` (monotonic).

    ``more`` submits the next job as each result is taken (map's ``buffersize``); leaving the
    iterator early cancels every job not yet taken.
    """
    try:
        while pending:
            if more is not None:
                for fut in itertools.islice(more, 1):
                    pending.append(fut)
            left = None if deadline is None else deadline - time.monotonic()
            # No local holds the future or its value while suspended at the yield: the caller's
            # result is the only reference left to it (as in CPython's map).
            yield _result_or_cancel(pending.popleft(), left)
    finally:
        for fut in pending:
            fut.cancel()


class PendingLimit:
    """``max_pending``: a bound on the jobs submitted and not finished (see Pool)."""

    def __init__(self, max_pending: int, on_full: str, full_timeout: float) -> None:
        self.max_pending = max_pending
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.room = threading.BoundedSemaphore(max_pending)

    @classmethod
    def make(cls, max_pending: int | None, on_full: str, full_timeout: float) -> PendingLimit | None:
        """Checked as ``Pool()`` takes them; None without a bound."""
        max_pending = check_count("max_pending", max_pending, minimum=1)
        if on_full not in ("block", "raise"):
            raise ValueError(f"on_full={on_full!r} must be 'block' or 'raise'")
        timeout = check_seconds("full_timeout", full_timeout, allow_none=False) or 0.0
        return None if max_pending is None else cls(max_pending, on_full, timeout)

    def take(self, fut: JobFuture[Any]) -> None:
        """Room for ``fut`` until it is done, or PoolFull (at once or after ``full_timeout``)."""
        if self.on_full == "raise":
            if not self.room.acquire(blocking=False):
                raise PoolFull(f"max_pending={self.max_pending} jobs are already pending")
        elif not self.room.acquire(timeout=self.full_timeout):
            raise PoolFull(
                f"no room among max_pending={self.max_pending} jobs within full_timeout={self.full_timeout}s"
            )
        fut.add_done_callback(self._give_back)

    def _give_back(self, _fut: object) -> None:
        self.room.release()
