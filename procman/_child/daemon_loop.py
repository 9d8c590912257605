"""The daemon runner: start the daemon, report ready, wait for a stop request, stop it."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import Any

from . import pickling
from .boot import Channel, report_error
from .linux import flush_and_exit


def run_daemon(blob: bytes, chan: Channel) -> int:
    """Unpickle the daemon, start it, report ready, wait for a stop request, stop it."""
    daemon = loads_daemon(blob)
    forward = getattr(daemon, "send_signal", None)
    if callable(forward):  # a command daemon: `procman signal` is for its program
        chan.on_signal = forward
    if _is_async(daemon.start) or _is_async(daemon.stop):
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run_async(daemon, chan))
    return _run_sync(daemon, chan)


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


def _crash(chan: Channel, exc: BaseException) -> None:
    report_error(chan, exc)
    flush_and_exit(1)


def _run_sync(daemon: Any, chan: Channel) -> int:
    # An exception escaping any thread of the daemon is a crash of the daemon: the supervisor then
    # restarts it under its policy instead of leaving a half-dead process "running".
    threading.excepthook = lambda args: _crash(chan, args.exc_value or RuntimeError("thread died"))
    daemon.start()
    chan.send({"t": "ready"})
    chan.stop_requested.wait()
    chan.send({"t": "stopping"})
    daemon.stop()
    return 0


async def _run_async(daemon: Any, chan: Channel) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop() -> None:
        loop.call_soon_threadsafe(stop.set)

    chan.on_stop = request_stop
    if chan.stop_requested.is_set():
        stop.set()

    def on_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, BaseException):
            exc = RuntimeError(str(context.get("message", "error in the daemon's event loop")))
        _crash(chan, exc)

    loop.set_exception_handler(on_error)

    # A background task that dies with an exception nobody retrieves is a crash of the daemon.
    # Waiting for the garbage collector to report it would never happen while the daemon keeps a
    # reference to the task, so check shortly after it ends whether anyone awaited its outcome.
    def check_task(task: asyncio.Task[Any]) -> None:
        # _log_traceback stays True until someone calls result()/exception() on the task.
        if task._log_traceback:
            exc = task.exception()
            _crash(chan, exc if exc is not None else RuntimeError("task failed"))

    def on_done(task: asyncio.Task[Any]) -> None:
        # it ended with an exception nobody has retrieved yet
        if task._log_traceback:
            loop.call_later(0.05, check_task, task)

    def task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        task.add_done_callback(on_done)
        return task

    loop.set_task_factory(task_factory)
    threading.excepthook = lambda args: _crash(chan, args.exc_value or RuntimeError("thread died"))
    await _maybe_await(daemon.start())
    chan.send({"t": "ready"})
    await stop.wait()
    chan.send({"t": "stopping"})
    await _maybe_await(daemon.stop())
    return 0


async def _maybe_await(value: Any) -> Any:
    if isinstance(value, Awaitable):
        return await value
    return value


def loads_daemon(blob: bytes) -> Any:
    return pickling.loads(blob)
