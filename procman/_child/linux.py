"""The few Linux process calls the child side makes: prctl, liveness, titles, a flushed exit."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import weakref

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)  # not Linux: the pipe-EOF watcher still guards


def proc_stat(pid: int | str) -> tuple[str, list[bytes]] | None:
    """``/proc/PID/stat`` as (command name, the fields after it: state, ppid, pgrp, ...), or None
    when the process is gone or unreadable. The name may hold spaces and parentheses: the fields
    start after the last ``)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, rest = raw.rpartition(b")")
    return head.partition(b"(")[2].decode(errors="replace"), rest.split()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The logging handlers this process found when it began (bootstrap): the host's, under fork.
_inherited_handlers: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


def disown_logging_handlers() -> None:
    """Leave every logging handler that exists now out of :func:`flush_and_exit`.

    Under fork they are the host's. Another thread of the host may have been inside one of them at
    the fork, writing to its stream: logging re-creates the handler's own lock in the child, but not
    the stream's (a buffered file's internal lock), which stays held by a thread that does not exist
    here, so flushing that stream deadlocks the child at its exit. What such a buffer holds is the
    host's output, too, which the child would write a second time.
    """
    for ref in _handler_refs():
        handler = ref()
        if handler is not None:
            _inherited_handlers.add(handler)


def _handler_refs() -> list[weakref.ref[logging.Handler]]:
    """Every logging handler of this process, as logging.shutdown() takes them (weak references)."""
    return list(logging._handlerList)  # type: ignore[attr-defined]


def flush_and_exit(code: int) -> None:
    """Flush the handlers this process made (not the inherited ones) and stdout/stderr, then exit."""
    try:
        own = [ref for ref in _handler_refs() if ref() not in _inherited_handlers]
        logging.shutdown(own)
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def forget_forkserver() -> None:
    """Drop the inherited write end of the forkserver's "alive" pipe.

    multiprocessing hands it to every child so that the forkserver outlives them; but the
    forkserver exits only on that pipe's end of file, and its exit is what fires the children's
    parent-death signal. A child holding it would keep the forkserver, and so itself, alive after
    the manager was killed (a worker busy in a job reads no pipe to notice).
    """
    try:
        from multiprocess import forkserver
    except ImportError:  # pragma: no cover - multiprocess is a dependency
        return
    server = forkserver._forkserver
    fd = server._forkserver_alive_fd
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    server._forkserver_alive_fd = None
    server._forkserver_pid = None
    server._forkserver_address = None


def set_title(title: str) -> None:
    """Name this process for ps and top (``procman: web``), not ``python3 -c from multiprocess...``."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; without it the title stays as it was
        return
    setproctitle.setproctitle(title)
