"""The child side: bootstrap of every supervised process and the daemon runner.

Order of the bootstrap matters and each step closes a hazard:

1. ``PR_SET_PDEATHSIG(SIGKILL)``, then a check that the manager is still alive: if it died between
   the fork and the ``prctl`` call the signal would never come, so the check closes that race.
2. A process group of its own, so a stop signal reaches whatever the daemon spawned.
3. stdout/stderr onto the log pipes (line-buffered), stdin from /dev/null, faulthandler on stderr
   (a segfault and the watchdog's SIGUSR1 dump every thread's stack into the log).
4. A guard, so that nothing the child started outlives it (still holding its ports when the
   replacement starts) or the manager. Two kinds:

   * a **daemon** gets a *reaper guard* (:func:`_split_off_reaper`): the process the manager started
     becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``) and forks; the fork runs the daemon, the
     original stays behind as its guard. A subreaper adopts every orphan below it, so each process
     the daemon ever started stays in the guard's tree, even one that called ``setsid()`` and whose
     parent exited. When the daemon's process ends (stop, crash, any signal) or the manager is gone
     (its end of the control pipe closes, or the parent-death signal), the guard SIGKILLs every
     process below it, reaps them, and only then exits, with the daemon's own status. It reaps
     adopted orphans all along, so none lingers as a zombie. Only a SIGKILL of the guard itself
     (which nothing in procman sends) defeats it; see README "What a daemon leaves behind".
   * a **worker** keeps the light shell guard (:func:`_start_guard`): it blocks on a pipe that only
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
import ctypes
import faulthandler
import inspect
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from . import _wire

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SWEEP_BOUND = 5.0  # seconds the reaper guard keeps killing and reaping leftovers before it gives up

_channel: Channel | None = None


class Channel:
    """The child's end of the control pipes. ``send`` is thread-safe."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._lock = threading.Lock()
        self.on_stop: Callable[[], None] = lambda: None
        self.stop_requested = threading.Event()

    def send(self, msg: dict[str, Any]) -> None:
        frame = _wire.encode_json(msg)
        with self._lock:
            _wire.write_all(self.wfd, frame)

    def send_raw(self, frame: bytes) -> None:
        with self._lock:
            _wire.write_all(self.wfd, frame)


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


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def _set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    _prctl(PR_SET_PDEATHSIG, sig)  # not Linux: the pipe-EOF watcher still guards


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flush_and_exit(code: int) -> None:
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


def manager_gone() -> None:
    """The manager is gone: kill this process group (this process included)."""
    _kill_group_and_exit()


def _kill_group_and_exit() -> None:
    # The manager is gone: take down everything this daemon started, then ourselves.
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)


def _forget_forkserver() -> None:
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


GUARD_SCRIPT = 'trap "" TERM INT HUP; read _; kill -s KILL -- -"$1"'


def _start_guard() -> None:
    """Start the group guard (see the module docstring).

    It is ``/bin/sh`` started with posix_spawn (vfork + exec: about 0.5 ms whatever this process's
    size, where a fork would copy its page tables), reading a pipe whose write end only this
    process holds: ``read`` returns at end of file, when this process is gone, and the guard
    SIGKILLs the group, itself included. It ignores SIGTERM/SIGINT/SIGHUP so that it outlives a
    SIGTERM to the group and still cleans up what ignored it.
    """
    r, _w = os.pipe()  # close-on-exec: programs the daemon execs never hold ``_w``
    try:
        os.posix_spawn(
            "/bin/sh",
            ["sh", "-c", GUARD_SCRIPT, "procman-guard", str(os.getpgid(0))],
            {},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError:  # no /bin/sh: the parent-death signal and the pipe-EOF watcher remain
        os.close(_w)
    finally:
        os.close(r)
    # ``_w`` stays open, unused, until this process is gone.


# ---------------------------------------------------------------------------------------------
# The reaper guard of a daemon (step 4 above)

_guarded: int | None = None  # in the guard: the daemon's pid until it is reaped (SIGUSR1 forwarding)


def _split_off_reaper(
    ctrl_in: int, ctrl_out: int, manager_pid: int, home_group: int, title: str | None
) -> None:
    """Fork: the daemon runs in the child, where this returns; this process stays as its guard.

    Only an ancestor adopts orphans, so the guard must sit above the daemon: the process the manager
    started and knows (its pid, its exit status, the process group named after it) becomes the
    guard, and the daemon runs one level down, in that group, which the guard itself leaves. So the
    manager's SIGTERM and SIGKILL of the group reach the daemon and everything still in its group,
    never the guard, which has to live on to sweep up what left the group.
    """
    guard_pid = os.getpid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # not inherited by the fork
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        _set_pdeathsig()  # a guard killed by SIGKILL takes the daemon along
        if os.getppid() != guard_pid:
            os._exit(137)
        # Until the guard has left the group, a SIGKILL of the group would kill it too: start
        # nothing that could then escape. End of file instead of the go: the guard died.
        go = os.read(go_r, 1)
        os.close(go_r)
        if not go:
            os._exit(137)
        if title:
            set_title(f"{title} (daemon)")
        return
    os.close(go_r)
    try:
        _guard(pid, go_w, ctrl_in, ctrl_out, manager_pid, home_group)
    except BaseException:  # noqa: BLE001 - a bug here must not leave the daemon's tree behind
        try:
            traceback.print_exc()
        finally:
            _sweep(-1)
            os._exit(70)


def _guard(
    daemon: int, go_w: int, ctrl_in: int, ctrl_out: int, manager_pid: int, home_group: int
) -> NoReturn:
    """The guard's life: watch the daemon, forward the watchdog's SIGUSR1, sweep, exit as it did."""
    global _guarded
    _guarded = daemon
    os.close(ctrl_out)  # only the daemon talks to the manager
    parent = os.getppid()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # The guard stays in the manager's process group: a Ctrl-C, ``timeout`` or ``kill -- -PGID``
    # there is the manager's to handle (a graceful stop), as for the forkserver. So these only
    # wake it, to check whether the manager is still there.
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _wake)
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)  # keep guarding while a shell suspends the host
    signal.signal(signal.SIGUSR1, _forward)
    # The parent's death (the manager's, or the forkserver's, which ends with the manager) now
    # wakes the guard instead of killing it: it has the daemon's tree to sweep first.
    _set_pdeathsig(signal.SIGHUP)
    try:
        os.setpgid(0, home_group)
    except OSError:  # the manager's group is gone, and so is the manager: noticed below
        pass
    os.write(go_w, b"g")
    os.close(go_w)
    status = _watch(daemon, ctrl_in, parent, manager_pid, wake_r)
    _guarded = None
    if status is None:  # the manager is gone: nobody reads the logs or the exit status any more
        _sweep(wake_r)
        os._exit(137)
    killed = _sweep(wake_r)
    if killed:
        listed = ", ".join(f"{pid} ({name})" for pid, name in list(killed.items())[:5])
        more = f" and {len(killed) - 5} more" if len(killed) > 5 else ""
        line = f"procman: killed {len(killed)} process(es) the daemon left behind: {listed}{more}\n"
        try:
            os.write(2, line.encode())
        except OSError:
            pass
    _exit_as(status)


def _wake(signum: int, frame: object) -> None:
    """A signal that only wakes the guard's loop (through the wakeup fd)."""


def _forward(signum: int, frame: object) -> None:
    pid = _guarded
    if pid is not None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _watch(daemon: int, ctrl_in: int, parent: int, manager_pid: int, wake_r: int) -> int | None:
    """Wait until the daemon's process ends (its wait status) or the manager is gone (None)."""
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    # No events asked for: POLLHUP comes all the same, once the last write end closed. Only the
    # manager holds it, so that is the manager's death (or its giving up on this child).
    poller.register(ctrl_in, 0)
    if not _alive(manager_pid):  # it died before the parent-death signal above was armed
        return None
    while True:
        status, _ = _reap(daemon)
        if status is not None:
            return status
        if os.getppid() != parent:
            return None
        for fd, _events in poller.poll():
            if fd == ctrl_in:
                return None
        _drain(wake_r)


def _reap(daemon: int) -> tuple[int | None, bool]:
    """Reap every child that ended (adopted orphans included); (the daemon's status, any left?)."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if pid == 0:
            return status, True
        if pid == daemon:
            status = st


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # EAGAIN: drained
        pass


def _sweep(wake_r: int) -> dict[int, str]:
    """SIGKILL everything below this process and reap it; returns pid -> name of what it killed.

    Until nothing is left: a process may fork between the scan and its kill, and its child, adopted
    by this subreaper, is found by the next scan. Bounded (SWEEP_BOUND): a process in uninterruptible
    sleep dies only when it wakes; it has its SIGKILL by then.
    """
    me = os.getpid()
    killed: dict[int, str] = {}
    deadline = time.monotonic() + SWEEP_BOUND
    poller = select.poll()  # not select(): a guard forked from a big host may hold fds past 1024
    if wake_r >= 0:
        poller.register(wake_r, select.POLLIN)
    while True:
        _, left = _reap(-1)
        if not left:  # no child at all: then nothing below either (orphans come up to us)
            return killed
        for pid, name in _descendants(me).items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.setdefault(pid, name)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return killed
        if wake_r >= 0:  # each death of a child (or adoption of a dead one) sends SIGCHLD
            poller.poll(min(remaining, 0.1) * 1000)
            _drain(wake_r)
        else:
            time.sleep(0.01)


def _descendants(root: int) -> dict[int, str]:
    """Live (non-zombie) processes below ``root``: pid -> command name, read from /proc."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        head, _, rest = stat.rpartition(b")")
        fields = rest.split()
        if len(fields) < 2 or fields[0] == b"Z":
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        names[pid] = head.partition(b"(")[2].decode(errors="replace")
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = names[pid]
                todo.append(pid)
    return found


def _exit_as(status: int) -> NoReturn:
    """End this process the way the daemon's ended (its code, or killed by its signal)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    sig = -code
    faulthandler.disable()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the daemon dumped its core, if any
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL: cannot be caught anyway
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


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
    _set_pdeathsig()
    if not _alive(manager_pid) or os.getppid() == 1:
        os._exit(137)
    _forget_forkserver()
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
        _start_guard()
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
        _split_off_reaper(ctrl_in, ctrl_out, manager_pid, home_group, title)
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
    reader = _wire.FrameReader()
    pending: list[bytes] = []
    while True:
        try:
            body = _wire.read_frame(chan.rfd, reader, pending)
        except OSError:
            body = None
        if body is None:
            _kill_group_and_exit()
            return
        if body[0] == _wire.KIND_JSON and _wire.decode_json(body).get("t") == "stop":
            chan.stop_requested.set()
            chan.on_stop()


def child_main(
    entry: Callable[[Channel], int],
    fds: tuple[Any, ...],
    manager_pid: int,
    options: dict[str, Any] | None = None,
) -> None:
    """The target of every supervised process: bootstrap, run ``entry``, exit with its code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forkserver ignores it (see _fsguard)
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
    _flush_and_exit(code)


def report_error(chan: Channel, exc: BaseException) -> None:
    """Print ``exc`` to the (captured) stderr and send it to the manager."""
    traceback.print_exception(exc, file=sys.stderr)
    try:
        chan.send(_wire.error_record(exc))
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


# ---------------------------------------------------------------------------------------------
# The daemon runner


def run_daemon(blob: bytes, chan: Channel) -> int:
    """Unpickle the daemon, start it, report ready, wait for a stop request, stop it."""
    daemon = loads_daemon(blob)
    if _is_async(daemon.start) or _is_async(daemon.stop):
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run_async(daemon, chan))
    return _run_sync(daemon, chan)


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


def _crash(chan: Channel, exc: BaseException) -> None:
    report_error(chan, exc)
    _flush_and_exit(1)


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
    from . import _pickling

    return _pickling.loads(blob)
