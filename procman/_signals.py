"""Run a manager until SIGINT/SIGTERM, for scripts.

The host's signal handlers are taken only for the duration of the call and restored afterwards.
The first signal asks for a graceful stop; a second one kills every daemon at once.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING

from ._errors import StateError

if TYPE_CHECKING:
    from ._manager import Manager
    from ._states import StopReport

HANDLED = (signal.SIGINT, signal.SIGTERM)


def run_until_signal(
    manager: Manager,
    *,
    start_timeout: float = 30.0,
    stop_timeout: float = 30.0,
    started: threading.Event | None = None,
) -> StopReport:
    """Start ``manager``, wait for SIGINT or SIGTERM, then stop it within ``stop_timeout``.

    Args:
        manager: a Manager with its daemons registered.
        start_timeout: passed to ``start()``.
        stop_timeout: passed to ``stop()``.
        started: set once every daemon is ready (for tests and readiness notifications).

    Returns:
        The stop report (``report.clean`` tells whether everything stopped gracefully).

    Raises:
        StateError: not called from the main thread (only it can receive signals in Python).
    """
    if threading.current_thread() is not threading.main_thread():
        raise StateError("run_until_signal() must be called from the main thread")
    requested = threading.Event()
    count = 0
    # Python runs a handler once for signals that arrived before it got to run it (two Ctrl-C
    # in a row on a busy host would be one). The wakeup fd gets one byte per signal delivered,
    # so the handler counts the bytes, not its own calls.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        try:
            delivered = sum(1 for b in wake_r.recv(4096) if b in HANDLED)
        except BlockingIOError:
            delivered = 0
        count += max(delivered, 1)
        if count == 1:
            requested.set()
        else:
            requested.set()
            manager.kill()

    previous = {sig: signal.signal(sig, on_signal) for sig in HANDLED}
    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    try:
        manager.start(timeout=start_timeout)
        if started is not None:
            started.set()
        while not requested.wait(0.5):
            pass
        return manager.stop(timeout=stop_timeout)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                sock.close()
