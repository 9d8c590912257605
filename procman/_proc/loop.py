"""The I/O thread: one uvloop event loop per Manager/Pool multiplexing every pipe and timer.

The public API is synchronous and thread-safe because every operation is a coroutine run on this
loop: sync callers wait on a ``concurrent.futures.Future`` with a bound, async callers await a
wrapped one. Children are spawned from this thread too, which matters: ``PR_SET_PDEATHSIG`` fires
when the *thread* that forked the child exits, so the forking thread must live as long as the
children do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from procman._errors import OperationTimeout, StateError

MAX_SECONDS = 100 * 365 * 24 * 3600.0
"""The longest duration accepted anywhere (100 years): beyond it the event loop's timers overflow
(``OverflowError`` after the action began), so it is refused at the call instead."""

T = TypeVar("T")


class IOThread:
    """Runs an event loop in a daemon thread until :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise StateError("the I/O thread has stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        """Run ``coro`` on the loop and wait for it, at most ``timeout`` seconds."""
        if self.in_loop_thread():
            coro.close()
            raise StateError(
                f"{what} was called on procman's I/O thread (from an event hook or a child callback);"
                " call it from another thread or use the asyncio API"
            )
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise OperationTimeout(f"{what} did not finish within {timeout}s") from None

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the I/O loop from another event loop."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive() and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)
