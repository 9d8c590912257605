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
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

from procman._child import wire as _wire

from .start import CTRL_READ, MAX_LINE, Launched, launch


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
        self._proc: Launched | None = None
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
        options: dict[str, Any] = dict(self.options or {})
        options["title"] = self.title
        child_ends = (to_child_r, from_child_w, out_w, err_w)
        parent_ends = (to_child_w, from_child_r, out_r, err_r)
        try:
            proc = launch(self.method, self.entry, child_ends, parent_ends, options, self.name)
        except BaseException:
            for fd in child_ends + parent_ends:
                os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
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

    def signal_process(self, sig: int) -> bool:
        """Send ``sig`` to the child's process alone (a daemon's guard forwards it); False if gone."""
        pid = self.pid
        if pid is None or self.exitcode is not None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

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
        assert self._proc is not None
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
        forkserver report) is a code of _wire.UNKNOWN_STATUSES (see Launched.record).
        """
        proc = self._proc
        assert proc is not None
        known = proc.status()
        if known is not None:
            return known
        if self.method == "forkserver":
            if self._exit_fd != proc.sentinel:
                # The pidfd: the process ended. Its status comes over the forkserver's pipe (the
                # sentinel), perhaps a moment later: wait for that report.
                self.loop.remove_reader(self._exit_fd)
                os.close(self._exit_fd)
                self._exit_fd = proc.sentinel
                self.loop.add_reader(self._exit_fd, self._on_exit_readable)
                return None
            return proc.read_forkserver_status()
        # A child of this process (fork, spawn). waitid on the pidfd, not waitpid on the pid: the
        # pid may already name another process if someone else reaped this one.
        try:
            info = os.waitid(os.P_PIDFD, self._exit_fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # The pidfd says it ended, yet it is no longer ours to wait for: someone else collected
            # its status (the host ignores SIGCHLD, so the kernel reaps at once, or a thread calls
            # os.waitpid(-1)). multiprocess would answer "still running" forever, and the readable
            # pidfd would call this again and again: a busy loop.
            return proc.record(_wire.STATUS_REAPED_ELSEWHERE)
        if info is None:
            return None  # not ended after all: a spurious wake-up
        # CLD_EXITED: its exit code; CLD_KILLED, CLD_DUMPED: the signal, negative.
        return proc.record(info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)

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
        if self.exitcode is None and self.pid is not None and self._proc is not None:
            self.kill()
            try:
                self._proc.join(1.0)
            except (AssertionError, ValueError, OSError):
                pass
            code = self._proc.exitcode
            self.exitcode = code if code is not None else -signal.SIGKILL
        if self._exit_fd >= 0:
            self.loop.remove_reader(self._exit_fd)
            if self._proc is None or self._exit_fd != self._proc.sentinel:
                os.close(self._exit_fd)
            self._exit_fd = -1
        self._close_pipes()
