"""The parent side of one supervised child process. Everything here runs on the I/O loop.

Data flow for one child::

    manager I/O loop                                   child process
    ----------------                                   -------------
    send(frame) --> ctrl pipe (parent -> child) -----> control reader thread
    on_frame(body) <-- ctrl pipe (child -> parent) <-- Channel.send (ready, hb, error, results)
    on_line(stream, line) <-- stdout / stderr pipes <- the daemon's prints, logging, tracebacks
    on_exit(code) <-- pidfd (fork/spawn) or the forkserver's status socket

Exit is reported only after the pipes were drained: everything the process wrote before it died
is already in the pipe buffers, so non-blocking reads until EAGAIN/EOF get the last lines and the
last control frames (a crash's traceback) in order, without waiting on grandchildren that may
still hold the write ends.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import signal
import threading
import warnings
from collections.abc import Callable
from multiprocessing import process as std_process  # free: dill imports stdlib multiprocessing
from typing import Any

import multiprocess
from multiprocess import context as mp_context
from multiprocess import process as mp_process
from multiprocess import util as _mp_util  # noqa: F401 - see _EXIT_HOOK_ORDER

try:  # imported here once: a forked child inherits it instead of importing it (~1-2 ms a start)
    import setproctitle  # noqa: F401
except ImportError:  # pragma: no cover - a dependency; children then keep their default title
    pass

from . import _pickling, _wire
from ._child import FdBox, child_main

START_METHODS = ("forkserver", "fork", "spawn")

# Python 3.12+ warns (DeprecationWarning) at every fork of a process that runs threads, and under
# start_method="fork" procman's own I/O thread always runs. That is one repeated, unexplained line
# per child; procman says it once, in its own words, when fork is chosen (warn_if_fork), and puts a
# filter for exactly that message from multiprocess's fork call in front before each fork (a filter
# set once would lose to any later simplefilter, pytest's included; catch_warnings would race with
# other threads when it restores the list).


def _quiet_fork_warning() -> None:
    warnings.filterwarnings(
        "ignore",
        message=r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks",
        category=DeprecationWarning,
        module=r"multiprocess\.popen_fork",
    )


_fork_warned = False
FORK_WARNING = (
    "start_method='fork' copies a process that runs threads (procman's I/O thread at least): a lock "
    "another thread holds at that instant stays locked in the child and can deadlock it, which is "
    "why Python 3.12+ deprecates forking such a process. Use start_method='forkserver' (the default) "
    "unless you need fork's speed or the host's memory in the children. (Shown once.)"
)


def warn_if_fork(method: str, stacklevel: int = 3) -> None:
    """Warn once per process that fork copies a threaded host (see FORK_WARNING)."""
    global _fork_warned
    if method == "fork" and not _fork_warned:
        _fork_warned = True
        warnings.warn(FORK_WARNING, RuntimeWarning, stacklevel=stacklevel)


# _EXIT_HOOK_ORDER: multiprocess.util registers, when first imported, an exit hook that removes the
# forkserver's socket directory. Importing it above, before procman and workers register their own
# exit hooks, makes ours run first (atexit runs in reverse order): pools and managers stop their
# children while the forkserver still works. Imported lazily instead, it could run first, and a
# worker still starting at exit would fail on a vanished socket.

_contexts: dict[str, Any] = {}
MAX_LINE = 65536  # bytes of a log line without newline before it is logged as it stands
CTRL_READ = 262144  # bytes per read of a control pipe


def get_context(method: str) -> Any:
    """The multiprocess context for ``method``; the forkserver preloads procman's child code."""
    ctx = _contexts.get(method)
    if ctx is None:
        ctx = multiprocess.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(
                ["procman._child", "procman._pickling", "orjson", "uvloop", "dill", "setproctitle"]
            )
        _contexts[method] = ctx
    return ctx


# Children never re-run the host's main script. multiprocessing's forkserver and spawn children
# re-import it (as __mp_main__) so that pickles naming __main__ resolve; that is why scripts need
# the main guard, why a script read from stdin or `-c` cannot start children, and why a script that
# makes a pool at top level loops. Here what a child needs from __main__ travels by value instead
# (procman._pickling), so the preparation data sent to a child leaves the main module out. fork
# children are copies of the host and re-run nothing anyway.


def _payload(popen: Any, process_obj: Any) -> io.BytesIO:
    """What a forkserver or spawn child reads first: preparation data (no main module), process.

    Pickled with ``popen`` as the spawning popen of multiprocess and of the stdlib multiprocessing
    (_pickling.spawning): a Queue, Lock or Event of either that the process object holds (a
    pool's initargs) is handed to this child, its pipes as file descriptors of this start.
    """
    from multiprocess import spawn
    from multiprocess.context import reduction

    prep = spawn.get_preparation_data(process_obj._name)
    prep.pop("init_main_from_path", None)
    prep.pop("init_main_from_name", None)
    buf = io.BytesIO()
    with _pickling.spawning(popen):
        reduction.dump(prep, buf)
        reduction.dump(process_obj, buf)
    return buf


def _forkserver_popen() -> type[Any]:
    from multiprocess import forkserver, popen_forkserver, util

    class Popen(popen_forkserver.Popen):  # type: ignore[misc]
        def _launch(self, process_obj: Any) -> None:
            buf = _payload(self, process_obj)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            # The child watches a duplicate of the data pipe's write end as its parent's sentinel.
            parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    return Popen


def _spawn_popen() -> type[Any]:
    from multiprocess import popen_spawn_posix, resource_tracker, spawn, util

    class Popen(popen_spawn_posix.Popen):  # type: ignore[misc]
        def _launch(self, process_obj: Any) -> None:
            tracker_fd = resource_tracker.getfd()
            self._fds.append(tracker_fd)
            buf = _payload(self, process_obj)
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            try:
                cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
                self._fds.extend([child_r, child_w])
                self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
                self.sentinel = parent_r
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(buf.getbuffer())
            finally:
                self.finalizer = util.Finalize(self, util.close_fds, [parent_r, parent_w])
                os.close(child_r)
                os.close(child_w)

    return Popen


_popens: dict[str, Any] = {}


def _popen(method: str, process_obj: Any) -> Any:
    """Launch ``process_obj`` with our Popen class for ``method`` (made once, on first use)."""
    cls = _popens.get(method)
    if cls is None:
        cls = _popens[method] = _forkserver_popen() if method == "forkserver" else _spawn_popen()
    return cls(process_obj)


class ForkServerProcess(mp_context.ForkServerProcess):  # type: ignore[misc]
    """A forkserver child that does not re-run the host's main script.

    A module-level class: the process object is pickled into the child, and a class made on the fly
    would be pickled by value, costing every start about 1.5 ms.
    """

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen("forkserver", process_obj)


class SpawnProcess(mp_context.SpawnProcess):  # type: ignore[misc]
    """A spawn child that does not re-run the host's main script (see ForkServerProcess)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen("spawn", process_obj)


def process_class(method: str) -> Any:
    """The Process class for ``method`` whose children do not re-run the host's main script."""
    if method == "forkserver":
        return ForkServerProcess
    if method == "spawn":
        return SpawnProcess
    return get_context(method).Process


_guarded_in: int | None = None  # the pid that set up the guard (a forked host sets it up anew)


def _guard_forkserver() -> None:
    """Before the forkserver starts: have it ignore SIGTERM sent to our process group (_fsguard)."""
    global _guarded_in
    if _guarded_in == os.getpid():
        return
    _guarded_in = os.getpid()
    from multiprocess import forkserver

    os.environ["_PROCMAN_FORKSERVER_PARENT"] = str(os.getpid())
    modules = list(forkserver._forkserver._preload_modules)
    if "procman._fsguard" not in modules:
        get_context("forkserver").set_forkserver_preload([*modules, "procman._fsguard"])


def preload(module: str) -> None:
    """Have the forkserver import ``module`` once, so children do not each import it.

    Effective only before the forkserver starts (its first child); later calls change nothing.
    """
    if module in ("__main__", "builtins") or not module:
        return
    from multiprocess import forkserver

    ctx = get_context("forkserver")
    modules = list(forkserver._forkserver._preload_modules)
    if module not in modules:
        ctx.set_forkserver_preload([*modules, module])


class Child:
    """One child process with its control and log pipes, driven by the I/O loop's callbacks."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        method: str,
        entry: Callable[..., int],
        *,
        name: str,
        on_frame: Callable[[bytes], None],
        on_line: Callable[[str, str], None],
        on_exit: Callable[[int], None],
        options: dict[str, bool] | None = None,
        title: str | None = None,
    ) -> None:
        self.loop = loop
        self.options = options
        self.title = title or f"procman: {name}"  # what ps and top show for the child
        self.method = method
        self.entry = entry
        self.name = name
        self.on_frame = on_frame
        self.on_line = on_line
        self.on_exit = on_exit
        self.pid: int | None = None
        self.exitcode: int | None = None
        self._proc: Any = None
        self._ctrl_w = -1
        self._ctrl_r = -1
        self._logs: dict[int, tuple[str, bytearray]] = {}
        self._exit_fd = -1
        self._reader = _wire.FrameReader()
        self._outbuf = bytearray()
        self._writing = False
        self._wlock = threading.Lock()  # the control pipe's write end, for send_now from any thread

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the process (blocks for the fork; the forkserver answers with the pid)."""
        made: list[int] = []
        try:
            for _ in range(4):
                made.extend(os.pipe())
        except OSError:  # out of descriptors: close what was made, or each failed spawn leaks it
            for fd in made:
                os.close(fd)
            raise
        to_child_r, to_child_w, from_child_r, from_child_w, out_r, out_w, err_r, err_w = made
        child_ends = (to_child_r, from_child_w, out_w, err_w)
        parent_ends = (to_child_w, from_child_r, out_r, err_r)
        try:
            if self.method == "forkserver":
                _guard_forkserver()
            fds = tuple(FdBox(fd) for fd in child_ends)
            options: dict[str, Any] = dict(self.options or {})
            options["title"] = self.title
            if self.method != "fork":
                # A forked child keeps the host's stdlib multiprocessing authkey; others get it
                # here (multiprocess's own travels in the preparation data), or a proxy of the
                # host's multiprocessing.Manager() fails in them with AuthenticationError.
                options["authkey"] = bytes(std_process.current_process().authkey)
            else:
                _quiet_fork_warning()
                # A forked child inherits the parent's ends of its own pipes; holding the write end
                # of its control pipe it would never see end of file when the manager dies.
                options["close_fds"] = parent_ends
            proc = process_class(self.method)(
                target=child_main,
                args=(self.entry, fds, os.getpid(), options),
                name=f"procman:{self.name}",
                daemon=False,
            )
            proc.start()
        except BaseException:
            for fd in child_ends + parent_ends:
                os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        # multiprocessing would join this process at interpreter exit and hang the host if it is
        # still running; procman's own atexit hook stops children instead.
        mp_process._children.discard(proc)
        self._proc = proc
        self.pid = proc.pid
        self._ctrl_w, self._ctrl_r = to_child_w, from_child_r
        for fd in parent_ends:
            os.set_blocking(fd, False)
        loop = self.loop
        loop.add_reader(from_child_r, self._on_ctrl_readable)
        self._logs = {out_r: ("stdout", bytearray()), err_r: ("stderr", bytearray())}
        for fd in (out_r, err_r):
            loop.add_reader(fd, self._on_log_readable, fd)
        # A pidfd turns readable when the process ends, ours or not. Under forkserver the child is
        # the forkserver's: its status comes over the forkserver's pipe (the sentinel), read once
        # the pidfd fired. Watching the sentinel alone would take the forkserver's death for the
        # child's.
        self._exit_fd = os.pidfd_open(proc.pid)
        loop.add_reader(self._exit_fd, self._on_exit_readable)

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def send(self, frame: bytes) -> bool:
        """Queue one frame to the child; False if the pipe is already closed."""
        if self._ctrl_w < 0:
            return False
        if self._writing:
            self._outbuf += frame
            return True
        try:
            n = os.write(self._ctrl_w, frame)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE: the child is gone; its exit is reported separately
            return False
        if n < len(frame):
            self._outbuf += frame[n:]
            self._writing = True
            self.loop.add_writer(self._ctrl_w, self._on_writable)
        return True

    def send_now(self, frame: bytes) -> bool:
        """Write ``frame`` at once from any thread; False if it cannot go out whole right now.

        For the pool's direct hand-off: a frame of at most PIPE_BUF bytes to a child whose pipe
        holds nothing queued goes out whole or not at all (POSIX), and the lock keeps the pipe
        from being closed (and its number reused) under the write.
        """
        if len(frame) > select.PIPE_BUF:
            return False
        with self._wlock:
            fd = self._ctrl_w
            if fd < 0 or self._writing:
                return False
            try:
                return os.write(fd, frame) == len(frame)
            except OSError:
                return False

    def _on_writable(self) -> None:
        try:
            n = os.write(self._ctrl_w, self._outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._outbuf.clear()
            n = 0
        del self._outbuf[:n]
        if not self._outbuf:
            self._writing = False
            self.loop.remove_writer(self._ctrl_w)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (to the child alone before it made one)."""
        pid = self.pid
        if pid is None or self.exitcode is not None:
            return
        try:
            # The group named after the child: the child's own, or, for a daemon, the one its
            # guard made for the daemon and left (the guard then sweeps what is left below it).
            os.killpg(pid, sig)
        except ProcessLookupError:  # no such group yet: the child alone
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        except PermissionError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    # -- readers -------------------------------------------------------------------------------

    def _on_ctrl_readable(self) -> None:
        self._drain_ctrl()

    def _drain_ctrl(self) -> None:
        fd = self._ctrl_r
        while fd >= 0:
            try:
                data = os.read(fd, CTRL_READ)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.loop.remove_reader(fd)
                os.close(fd)
                self._ctrl_r = fd = -1
                return
            for body in self._reader.feed(data):
                self.on_frame(body)
            if len(data) < CTRL_READ:  # drained: the loop calls again when more arrives
                return

    def _on_log_readable(self, fd: int) -> None:
        self._drain_log(fd)

    def _drain_log(self, fd: int) -> None:
        stream, buf = self._logs[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                if buf:
                    self.on_line(stream, buf.decode("utf-8", "replace"))
                    buf.clear()
                self.loop.remove_reader(fd)
                os.close(fd)
                del self._logs[fd]
                return
            buf += data
            if b"\n" in data:
                *lines, rest = bytes(buf).split(b"\n")
                buf[:] = rest
                for line in lines:
                    self.on_line(stream, line.decode("utf-8", "replace").rstrip("\r"))
            if len(buf) > MAX_LINE:  # output without newlines must not grow without bound
                cut = _wire.utf8_cut(buf, MAX_LINE)  # never inside a character
                self.on_line(stream, bytes(buf[:cut]).decode("utf-8", "replace"))
                del buf[:cut]
            if len(data) < 65536:
                break

    def _on_exit_readable(self) -> None:
        code = self._collect_status()
        if code is None:
            return
        self.exitcode = code
        self.loop.remove_reader(self._exit_fd)
        if self._exit_fd != self._proc.sentinel:
            os.close(self._exit_fd)
        self._exit_fd = -1
        self._close_pipes()
        self.on_exit(code)

    def _collect_status(self) -> int | None:
        """The ended process's exit code, or None while its status is still to come.

        Called when the watched fd is readable, which never stops being true once it is: every
        path here either returns a code, and the caller stops watching, or switches to another fd.
        Each status multiprocess could not get (it would report None forever, or 255 for a lost
        forkserver report) is a code of _wire.UNKNOWN_STATUSES, stored as the popen's own
        return code so that closing the process object works.
        """
        popen = self._proc._popen
        if popen.returncode is not None:
            return int(popen.returncode)
        if self.method == "forkserver":
            if self._exit_fd != popen.sentinel:
                # The pidfd: the process ended. Its status comes over the forkserver's pipe (the
                # sentinel), perhaps a moment later: wait for that report.
                self.loop.remove_reader(self._exit_fd)
                os.close(self._exit_fd)
                self._exit_fd = popen.sentinel
                self.loop.add_reader(self._exit_fd, self._on_exit_readable)
                return None
            from multiprocess import forkserver

            try:
                popen.returncode = forkserver.read_signed(popen.sentinel)
            except (OSError, EOFError):
                # End of file without a report: the forkserver died. multiprocess calls that
                # EXIT(255), which reads as the process's own choice; nobody knows its status.
                popen.returncode = _wire.STATUS_FORKSERVER_DIED
            return int(popen.returncode)
        # A child of this process (fork, spawn). waitid on the pidfd, not waitpid on the pid: the
        # pid may already name another process if someone else reaped this one.
        try:
            info = os.waitid(os.P_PIDFD, self._exit_fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # The pidfd says it ended, yet it is no longer ours to wait for: someone else collected
            # its status (the host ignores SIGCHLD, so the kernel reaps at once, or a thread calls
            # os.waitpid(-1)). multiprocess would answer "still running" forever, and the readable
            # pidfd would call this again and again: a busy loop.
            popen.returncode = _wire.STATUS_REAPED_ELSEWHERE
            return int(popen.returncode)
        if info is None:
            return None  # not ended after all: a spurious wake-up
        if info.si_code == os.CLD_EXITED:
            popen.returncode = info.si_status
        else:  # CLD_KILLED, CLD_DUMPED
            popen.returncode = -info.si_status
        return int(popen.returncode)

    def _close_pipes(self) -> None:
        """Drain what the dead process left in its pipes, then close the parent's ends."""
        self._drain_ctrl()
        for fd in list(self._logs):
            self._drain_log(fd)
            if fd in self._logs:
                stream, buf = self._logs.pop(fd)
                if buf:
                    self.on_line(stream, buf.decode("utf-8", "replace"))
                self.loop.remove_reader(fd)
                os.close(fd)
        if self._ctrl_r >= 0:
            self.loop.remove_reader(self._ctrl_r)
            os.close(self._ctrl_r)
            self._ctrl_r = -1
        with self._wlock:
            if self._ctrl_w >= 0:
                if self._writing:
                    self.loop.remove_writer(self._ctrl_w)
                    self._writing = False
                os.close(self._ctrl_w)
                self._ctrl_w = -1
        if self._proc is not None:
            try:
                self._proc.close()
            except ValueError:
                pass

    def force_close(self) -> None:
        """Kill the process and release everything without waiting (loop shutting down)."""
        if self.exitcode is None and self.pid is not None:
            self.kill()
            try:
                self._proc.join(1.0)
            except (AssertionError, ValueError, OSError):
                pass
            code = self._proc.exitcode if self._proc is not None else None
            self.exitcode = code if code is not None else -signal.SIGKILL
        if self._exit_fd >= 0:
            self.loop.remove_reader(self._exit_fd)
            if self._proc is None or self._exit_fd != self._proc.sentinel:
                os.close(self._exit_fd)
            self._exit_fd = -1
        self._close_pipes()
