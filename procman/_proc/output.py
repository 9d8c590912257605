"""Where the lines that children print go: the host's terminal, ``logging``, or a callable.

A library that swallows what its children print is a trap: a script with no logging set up would
see nothing of its daemons' or jobs' prints, nor of a crash's traceback. So by default (``"auto"``)
a line goes to ``logging`` when the host configured a handler that would receive it, and otherwise
to the host's own stdout/stderr, prefixed with its source's name as honcho and ``procman run`` do::

    kafka-consumer | connected to broker
    render_report  | rendering 2026-11-22

Lines are written by the owner's event thread (the same one that delivers events, so a crash's
traceback comes before the event reporting the exit), never by the I/O loop: a terminal or pipe that
blocks never stalls supervision. At most :data:`MAX_QUEUED` bytes of lines wait (a terminal that
stays blocked that long is not being read); beyond that, lines are dropped and a note says how many.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, Literal

OutputHook = Callable[[str, str, str], None]
"""``hook(source, stream, line)``: source is the daemon's or job's name, stream "stdout"/"stderr"."""

Output = Literal["auto", "terminal", "logging"] | OutputHook
OUTPUTS = ("auto", "terminal", "logging")
MAX_QUEUED = 32 * 1024 * 1024


def check_output(output: object) -> Output:
    """``output`` if valid; else a ValueError that lists the choices."""
    if callable(output) or output in OUTPUTS:
        return output  # type: ignore[return-value]
    raise ValueError(
        f"output={output!r} is not supported: use 'auto' (terminal unless logging is configured), "
        "'terminal', 'logging', or a callable taking (source, stream, line)"
    )


class _Line:
    __slots__ = ("router", "source", "stream", "text")

    def __init__(self, router: OutputRouter, source: str, stream: str, text: str) -> None:
        self.router = router
        self.source = source
        self.stream = stream
        self.text = text

    def deliver(self) -> None:
        self.router.deliver(self)


class OutputRouter:
    """Routes one owner's child lines (see the module docstring).

    Args:
        output: "auto", "terminal", "logging" or a callable (see :data:`Output`).
        logger: the logger prefix; a line from ``source`` goes to ``f"{logger}.{source}"``.
        field: the name of the record attribute that carries the source ("daemon", "job").
        emit: puts an item on the owner's event thread (items with ``deliver()`` are run there).
    """

    def __init__(self, output: Output, logger: str, field: str, emit: Callable[[Any], None]) -> None:
        self.output = check_output(output)
        self.logger = logger
        self.field = field
        self._emit = emit
        self._queued = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self.width = 0

    def line(self, source: str, stream: str, text: str, **extra: Any) -> None:
        """Route one line; called on the I/O loop, returns at once."""
        if self.output == "logging" or (self.output == "auto" and self._logging_configured(source)):
            extra[self.field] = source
            extra["stream"] = stream
            logging.getLogger(f"{self.logger}.{source}").info("%s", text, extra=extra)
            return
        with self._lock:
            if self._queued >= MAX_QUEUED:
                self._dropped += 1
                return
            self._queued += len(text) + 64
        self._emit(_Line(self, source, stream, text))

    def _logging_configured(self, source: str) -> bool:
        logger = logging.getLogger(f"{self.logger}.{source}")
        return logger.isEnabledFor(logging.INFO) and logger.hasHandlers()

    def deliver(self, item: _Line) -> None:
        """Write one line (on the event thread)."""
        with self._lock:
            self._queued -= len(item.text) + 64
            dropped, self._dropped = self._dropped, 0
            last = self._queued == 0
        note = f"({dropped} lines dropped: output came faster than it was read)" if dropped else ""
        if callable(self.output):
            if note:
                self.output(item.source, "stderr", note)
            self.output(item.source, item.stream, item.text)
            return
        self.width = min(max(self.width, len(item.source)), 24)
        out = sys.stderr if item.stream == "stderr" else sys.stdout
        try:
            if note:
                sys.stderr.write(f"{item.source:<{self.width}} | {note}\n")
            out.write(f"{item.source:<{self.width}} | {item.text}\n")
            if last or item.stream == "stderr":  # flushed once the backlog is written
                out.flush()
        except (OSError, ValueError):  # the host's stdout is closed or gone: nowhere to write
            pass
