"""Daemons the tests run in real child processes (module-level so they pickle by reference)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import threading
import time

import procman


class Quick:
    """Starts and stops at once; prints a line on each."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay

    def start(self) -> None:
        print(f"start-begin {self.name} {time.time():.6f}", flush=True)
        time.sleep(self.delay)
        print(f"start-end {self.name} {time.time():.6f}", flush=True)

    def stop(self) -> None:
        print(f"stopping {self.name}", flush=True)


class Rendezvous:
    """Its start() returns once ``count`` daemons have begun theirs (files in ``where``), or after 20 s.

    Prints ``met NAME K``: how many had begun when it returned. K == count for every daemon proves the
    starts overlapped, with no wall-clock bound; serial starts would each see fewer.
    """

    def __init__(self, name: str, where: str, count: int) -> None:
        self.name = name
        self.where = where
        self.count = count

    def start(self) -> None:
        import os

        open(os.path.join(self.where, self.name), "w").close()
        deadline = time.monotonic() + 20.0
        seen = len(os.listdir(self.where))
        while seen < self.count and time.monotonic() < deadline:
            time.sleep(0.01)
            seen = len(os.listdir(self.where))
        print(f"met {self.name} {seen}", flush=True)

    def stop(self) -> None:
        pass


class FailStart:
    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        raise ValueError(f"bad config for {self.name}")

    def stop(self) -> None:
        pass


def _crash(mode: str) -> None:
    if mode == "exception":
        raise RuntimeError("consumer blew up")
    if mode == "exit":
        os._exit(3)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "segfault":
        ctypes.string_at(0)
    raise AssertionError(mode)


class Crasher:
    """Crashes ``after`` seconds after start, in a background thread, by ``mode``.

    With ``marker`` set, crashes only while that file does not exist (creating it first), so the
    replacement process stays up: one crash, one restart.

    With ``trigger`` (a socket path) set, the first process crashes when the test connects there
    instead: after the test saw it READY, so the crash never races the ``ready`` frame (see
    :func:`pull`). The processes after it (the socket file is there) crash on the timer again.
    """

    def __init__(
        self,
        name: str,
        mode: str,
        after: float = 0.05,
        marker: str | None = None,
        trigger: str | None = None,
    ) -> None:
        self.name = name
        self.mode = mode
        self.after = after
        self.marker = marker
        self.trigger = trigger

    def start(self) -> None:
        if self.marker is not None and os.path.exists(self.marker):
            print(f"{self.name} healthy now", flush=True)
            return
        if self.marker is not None:
            open(self.marker, "w").close()
        if self.trigger is not None and not os.path.exists(self.trigger):
            # Listening before start() returns, so before READY: the test's connect cannot miss it.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.trigger)
            sock.listen(1)
            threading.Thread(target=self._on_trigger, args=(sock,), daemon=True).start()
            return
        threading.Thread(target=self._later, daemon=True).start()

    def _later(self) -> None:
        time.sleep(self.after)
        _crash(self.mode)

    def _on_trigger(self, sock: socket.socket) -> None:
        sock.accept()  # the process ends with the crash, or with the test's stop()
        _crash(self.mode)

    def stop(self) -> None:
        pass


def pull(trigger: str) -> None:
    """Make a Crasher started with ``trigger`` crash now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(trigger)


class Stubborn:
    """Ignores stop() and (unless ``ignore_term=False``) SIGTERM."""

    def __init__(self, name: str, ignore_term: bool = True) -> None:
        self.name = name
        self.ignore_term = ignore_term

    def start(self) -> None:
        if self.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def stop(self) -> None:
        time.sleep(3600)


class LastWords:
    """Prints a line, then dies at once."""

    def __init__(self, name: str, line: str) -> None:
        self.name = name
        self.line = line

    def start(self) -> None:
        threading.Thread(target=self._die, daemon=True).start()

    def _die(self) -> None:
        time.sleep(0.05)
        print(self.line, flush=True)
        os._exit(7)

    def stop(self) -> None:
        pass


class AsyncTicker:
    """An asyncio daemon: a task ticks; optional crash of that task."""

    def __init__(self, name: str, crash_after: float | None = None, marker: str | None = None) -> None:
        self.name = name
        self.crash_after = crash_after
        self.marker = marker
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        print(f"async started on {type(loop).__module__}", flush=True)
        crash = self.crash_after is not None
        if self.marker is not None:
            crash = crash and not os.path.exists(self.marker)
            if crash:
                open(self.marker, "w").close()
        self._task = loop.create_task(self._tick(crash))

    async def _tick(self, crash: bool) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            if crash and self.crash_after is not None and time.monotonic() - started > self.crash_after:
                raise RuntimeError("async consumer failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        print("async stopped", flush=True)


class Beating:
    """Sends heartbeats from its work loop while ``beat`` is True, then hangs in that loop."""

    def __init__(self, name: str, beats: int) -> None:
        self.name = name
        self.beats = beats

    def start(self) -> None:
        threading.Thread(target=self._work, name="work-loop", daemon=True).start()

    def _work(self) -> None:
        for _ in range(self.beats):
            procman.heartbeat()
            time.sleep(0.02)
        while True:  # hung: no more heartbeats
            time.sleep(0.05)

    def stop(self) -> None:
        pass


class WithSocket:
    """Holds an open socket: neither pickle nor dill can send it to a child."""

    def __init__(self, name: str) -> None:
        import socket

        self.name = name
        self.sock = socket.socket()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PipeProbe:
    """Prints how many of its own fds point at its control pipe (1: only the read end)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        from procman._child import boot as _child

        chan = _child._channel
        assert chan is not None
        target = os.readlink(f"/proc/self/fd/{chan.rfd}")
        ends = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == target:
                    ends += 1
            except OSError:
                pass
        print(f"control pipe ends held: {ends}", flush=True)

    def stop(self) -> None:
        pass


class Chatty:
    """Writes 1 MB to stdout without a single newline, then one short line."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        import sys

        sys.stdout.write("x" * 1_000_000)
        sys.stdout.write("\nend of chatter\n")
        sys.stdout.flush()

    def stop(self) -> None:
        pass


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)


class Escapers:
    """start() leaves processes behind that try to outlive the daemon; their pids go to ``pidfile``.

    ``setsid`` of them daemonize the classic way (fork, ``setsid()``, fork again, the middle one
    exits): orphans in a session of their own, out of the daemon's process group and ancestry.
    ``forked`` of them are plain ``os.fork()`` children that sleep, holding every fd the daemon had.
    The pid file (the daemon's own pid, then theirs) is complete, written whole and then renamed,
    before start() returns.
    """

    def __init__(self, name: str, pidfile: str, setsid: int = 5, forked: int = 5) -> None:
        self.name = name
        self.pidfile = pidfile
        self.setsid = setsid
        self.forked = forked

    def start(self) -> None:
        r, w = os.pipe()
        for _ in range(self.setsid):
            middle = os.fork()
            if middle == 0:
                try:
                    os.setsid()
                    if os.fork() == 0:
                        os.write(w, f"{os.getpid()}\n".encode())
                        _sleep_forever()
                finally:
                    os._exit(0)
            os.waitpid(middle, 0)
        for _ in range(self.forked):
            if os.fork() == 0:
                try:
                    os.write(w, f"{os.getpid()}\n".encode())
                    _sleep_forever()
                finally:
                    os._exit(0)
        os.close(w)
        pids: list[str] = []
        with open(r, "rb") as f:
            while len(pids) < self.setsid + self.forked:
                line = f.readline()
                assert line, "a process left behind did not report its pid"
                pids.append(line.decode().strip())
        with open(self.pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n{' '.join(pids)}\n")
        os.rename(self.pidfile + ".tmp", self.pidfile)

    def stop(self) -> None:
        pass


class ModulesReport:
    """Prints the procman and workers modules its process loaded, then idles (tests/test_layers.py)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        import sys

        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("procman", "workers"))
        print("loaded " + " ".join(loaded), flush=True)

    def stop(self) -> None:
        pass


class SignalNoter:
    """Writes the number of each SIGUSR1/SIGHUP it receives to ``path`` (one line each)."""

    def __init__(self, path: str) -> None:
        self.name = "noter"
        self.path = path

    def start(self) -> None:
        def note(signum: int, frame: object) -> None:
            with open(self.path, "a") as f:
                f.write(f"{signum}\n")

        for sig in (signal.SIGUSR1, signal.SIGHUP):
            signal.signal(sig, note)

    def stop(self) -> None:
        pass


class Hog:
    """Holds ``mb`` megabytes of resident memory and burns CPU in a thread while it runs."""

    def __init__(self, mb: int) -> None:
        self.name = "hog"
        self.mb = mb
        self.data = b""

    def start(self) -> None:
        self.data = os.urandom(self.mb * 1024 * 1024)

        def burn() -> None:
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                pass

        threading.Thread(target=burn, daemon=True).start()

    def stop(self) -> None:
        pass


class FlakyStart:
    """Its start() raises the first ``failures`` times (counted in the file ``path``), then works."""

    def __init__(self, path: str, failures: int) -> None:
        self.name = "flaky"
        self.path = path
        self.failures = failures

    def start(self) -> None:
        with open(self.path, "a") as f:
            f.write("attempt\n")
        with open(self.path) as f:
            attempts = len(f.readlines())
        if attempts <= self.failures:
            raise ConnectionError(f"the broker is not up yet (attempt {attempts})")

    def stop(self) -> None:
        pass
