"""The bootstrap every supervised process runs first, and its control channel to the manager.

Order of the bootstrap matters and each step closes a hazard:

1. ``PR_SET_PDEATHSIG(SIGKILL)``, then a check that the manager is still alive: if it died between
   the fork and the ``prctl`` call the signal would never come, so the check closes that race.
2. A process group of its own, so a stop signal reaches whatever the daemon spawned.
3. stdout/stderr onto the log pipes (line-buffered), stdin from /dev/null, faulthandler on stderr
   (a segfault and the watchdog's SIGUSR1 dump every thread's stack into the log).
4. A guard, so that nothing the child started outlives it (still holding its ports when the
   replacement starts) or the manager. Two kinds:

   * a **daemon** gets a *reaper guard* (guard.split_off_reaper): the process the manager started
     becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``) and forks; the fork runs the daemon, the
     original stays behind as its guard. A subreaper adopts every orphan below it, so each process
     the daemon ever started stays in the guard's tree, even one that called ``setsid()`` and whose
     parent exited. When the daemon's process ends (stop, crash, any signal) or the manager is gone
     (its end of the control pipe closes, or the parent-death signal), the guard SIGKILLs every
     process below it, reaps them, and only then exits, with the daemon's own status. It reaps
     adopted orphans all along, so none lingers as a zombie. Only a SIGKILL of the guard itself
     (which nothing in procman sends) defeats it; see README "What a daemon leaves behind".
   * a **worker** keeps the light shell guard (guard.start_shell_guard): it blocks on a pipe that only
     the child holds open and, when the child is gone, SIGKILLs the child's process group.

5. A reader thread on the control pipe: a ``stop`` frame asks for a graceful stop; end of file means
   the manager is gone, and the whole process group is killed.

Process layout of one daemon (the manager knows the guard's pid; signals go to the group)::

    manager (or the forkserver)
     `-- guard        "procman: NAME"            subreaper; in the manager's process group
          `-- daemon  "procman: NAME (daemon)"   process group = the guard's pid
               `-- whatever it starts; orphans, setsid() ones included, are adopted by the guard
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from . import wire
from .guard import split_off_reaper, start_shell_guard
from .linux import (
    alive,
    disown_logging_handlers,
    flush_and_exit,
    forget_forkserver,
    set_pdeathsig,
    set_title,
)

_channel: Channel | None = None


class Channel:
    """The child's end of the control pipes. ``send`` is thread-safe."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._lock = threading.Lock()
        self.on_stop: Callable[[], None] = lambda: None
        # `procman signal NAME SIG`: this process's main thread by default (a command daemon's
        # program instead). Directed at the main thread: sent to the process, the kernel may give
        # it to this reader thread, and the main thread, asleep in a wait, would run the daemon's
        # handler only when it wakes up.
        self.on_signal: Callable[[int], None] = _to_main_thread
        self.stop_requested = threading.Event()

    def send(self, msg: dict[str, Any]) -> None:
        frame = wire.encode_json(msg)
        with self._lock:
            wire.write_all(self.wfd, frame)

    def send_raw(self, frame: bytes) -> None:
        with self._lock:
            wire.write_all(self.wfd, frame)


def _to_main_thread(signum: int) -> None:
    main = threading.main_thread().ident
    assert main is not None
    signal.pthread_kill(main, signum)


def heartbeat() -> None:
    """Tell the manager this daemon is alive (for the per-daemon watchdog).

    Call it from the daemon's own work loop, not from a timer thread, so that it proves the work is
    progressing. Outside a procman child it does nothing.
    """
    chan = _channel
    if chan is not None:
        chan.send({"t": "hb"})


def in_child() -> bool:
    """True inside a process that procman started."""
    return _channel is not None


def manager_gone() -> None:
    """The manager is gone: kill this process group (this process included)."""
    _kill_group_and_exit()


def _kill_group_and_exit() -> None:
    # The manager is gone: take down everything this daemon started, then ourselves.
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)


def bootstrap(
    fds: tuple[int, int, int, int],
    manager_pid: int,
    *,
    guard: bool = True,
    reader: bool = True,
    close_fds: tuple[int, ...] = (),
    title: str | None = None,
    reaper: bool = False,
) -> Channel:
    """Steps 1-5 above; returns the control channel. ``fds``: ctrl-in, ctrl-out, stdout, stderr.

    With ``reader=False`` the caller reads the control pipe itself (a worker's main loop does) and
    must treat its end of file as the manager's death (:func:`manager_gone`). With ``reaper=True``
    (daemons) the guard is the reaper guard and this returns in the forked daemon process only.
    """
    global _channel
    disown_logging_handlers()  # the host's, under fork: never flushed here (linux.flush_and_exit)
    set_pdeathsig()
    if not alive(manager_pid) or os.getppid() == 1:
        os._exit(137)
    forget_forkserver()
    if title:
        set_title(title)
    for fd in close_fds:  # the parent's ends of our pipes, inherited through fork
        try:
            os.close(fd)
        except OSError:
            pass
    home_group = os.getpgid(0)
    try:
        os.setpgid(0, 0)
    except OSError:  # already a group leader (a session leader cannot move): keep going
        pass
    ctrl_in, ctrl_out, out_fd, err_fd = fds
    for fd in fds:  # the guard and programs the daemon starts must not hold our pipes
        os.set_inheritable(fd, False)
    if guard and not reaper and os.getpgid(0) == os.getpid():
        start_shell_guard()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
    if reaper:
        # After the log pipes are in place (the guard reports what it had to kill there), before
        # any thread starts (the fork copies only this one).
        split_off_reaper(ctrl_in, ctrl_out, manager_pid, home_group, title)
    # A forked child inherits the parent's handlers; reset the ones that would surprise a daemon.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    # After fork the running-loop marker of the parent's I/O thread is still set in this thread.
    asyncio.events._set_running_loop(None)
    chan = Channel(ctrl_in, ctrl_out)
    _channel = chan
    if reader:
        threading.Thread(target=_control_reader, args=(chan,), name="procman-control", daemon=True).start()
    return chan


def _control_reader(chan: Channel) -> None:
    reader = wire.FrameReader()
    pending: list[bytes] = []
    while True:
        try:
            body = wire.read_frame(chan.rfd, reader, pending)
        except OSError:
            body = None
        if body is None:
            _kill_group_and_exit()
            return
        if body[0] != wire.KIND_JSON:
            continue
        msg = wire.decode_json(body)
        if msg.get("t") == "stop":
            chan.stop_requested.set()
            chan.on_stop()
        elif msg.get("t") == "signal" and isinstance(msg.get("sig"), int):
            try:
                chan.on_signal(msg["sig"])
            except OSError as exc:
                print(f"procman: could not deliver signal {msg['sig']}: {exc}", file=sys.stderr)


def child_main(
    entry: Callable[[Channel], int],
    fds: tuple[Any, ...],
    manager_pid: int,
    options: dict[str, Any] | None = None,
) -> None:
    """The target of every supervised process: bootstrap, run ``entry``, exit with its code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forkserver ignores it (see procman._child.fsguard)
    os.environ.pop("_PROCMAN_FORKSERVER_PARENT", None)  # for the forkserver only, not the daemons
    options = dict(options or {})
    authkey = options.pop("authkey", None)
    if authkey is not None:
        # The host's stdlib multiprocessing authkey (multiprocess sends its own in the preparation
        # data): a Manager proxy received in a job or daemon authenticates with it.
        from multiprocessing import process as std_process

        std_process.current_process().authkey = authkey
    raw = tuple(f.fd if isinstance(f, FdBox) else int(f) for f in fds)
    chan = bootstrap((raw[0], raw[1], raw[2], raw[3]), manager_pid, **options)
    code = 1
    try:
        code = entry(chan)
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit non-zero
        report_error(chan, exc)
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
    flush_and_exit(code)


def report_error(chan: Channel, exc: BaseException) -> None:
    """Print ``exc`` to the (captured) stderr and send it to the manager."""
    traceback.print_exception(exc, file=sys.stderr)
    try:
        chan.send(wire.error_record(exc))
    except OSError:
        pass


class FdBox:
    """A file descriptor handed to a child: survives fork as is and spawn/forkserver by SCM_RIGHTS."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocess import reduction

        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup: Any) -> FdBox:
    return FdBox(dup.detach())
