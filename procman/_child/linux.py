"""The few Linux process calls the child side makes: prctl, liveness, titles, a flushed exit."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flush_and_exit(code: int) -> None:
    try:
        logging.shutdown()
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
