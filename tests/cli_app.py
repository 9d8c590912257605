"""Daemons and jobs that the procman command tests name in their config files."""

from __future__ import annotations

import os
import threading
import time


class Quick:
    """Ready at once; prints a line when it starts."""

    name = "quick"

    def __init__(self, greeting: str = "up") -> None:
        self.greeting = greeting
        self._stop = threading.Event()

    def start(self) -> None:
        print(f"{self.greeting} pid={os.getpid()} at={time.time():.6f}", flush=True)
        threading.Thread(target=self._stop.wait, daemon=True).start()

    def stop(self) -> None:
        print(f"stopping pid={os.getpid()} at={time.time():.6f}", flush=True)
        self._stop.set()


class SlowReady(Quick):
    """Takes ``delay`` seconds to be ready."""

    def __init__(self, delay: float = 0.5) -> None:
        super().__init__("slow-up")
        self.delay = delay

    def start(self) -> None:
        time.sleep(self.delay)
        super().start()


class Stubborn(Quick):
    """Hangs in stop() and ignores SIGTERM: only SIGKILL ends it."""

    def start(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        super().start()

    def stop(self) -> None:
        print("not stopping", flush=True)
        time.sleep(3600)


def square(x: int) -> int:
    return x * x


def fails() -> None:
    raise ValueError("job failed on purpose")


def _settings() -> dict[str, str]:
    return {}


def lookup(key: str = "missing-key") -> str:
    """Fails one call deep in the worker: KeyError: 'missing-key'."""
    print(f"looking up {key}")  # a job's print: shown under the job's name
    return _settings()[key]


NOT_CALLABLE = 42


class Crasher(Quick):
    """Ready, then crashes 0.1 s later, every time."""

    def start(self) -> None:
        super().start()

        def crash() -> None:
            time.sleep(0.1)
            raise RuntimeError("crashed on purpose")

        threading.Thread(target=crash, daemon=True).start()


class FailsToStart(Quick):
    def start(self) -> None:
        raise ConnectionRefusedError("database at db:5432 refused the connection")


class Ticker(Quick):
    """Prints ``tick N`` every ``every`` seconds; notes each SIGUSR1/SIGHUP it gets as a line."""

    def __init__(self, every: float = 0.05, tag: str = "tick") -> None:
        super().__init__("ticker-up")
        self.every = every
        self.tag = tag

    def start(self) -> None:
        import signal

        def note(signum: int, frame: object) -> None:
            print(f"got signal {signal.Signals(signum).name}", flush=True)

        for sig in (signal.SIGUSR1, signal.SIGHUP):
            signal.signal(sig, note)
        super().start()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            print(f"{self.tag} {n}", flush=True)


def note_run(path: str) -> int:
    """Appends a line to ``path``; returns how many lines it now has."""
    with open(path, "a") as f:
        f.write("run\n")
    with open(path) as f:
        return len(f.readlines())
