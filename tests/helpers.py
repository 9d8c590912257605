"""Test helpers: an event recorder and a process-liveness probe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import procman
from workers import PoolEvent, PoolEventKind


class Recorder:
    """An on_event hook that records events and lets a test wait for one (bounded)."""

    def __init__(self) -> None:
        self.events: list[procman.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: procman.Event) -> None:
        procman.log_event(event)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[list[procman.Event]], bool], timeout: float = 15.0
    ) -> list[procman.Event]:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.events), timeout):
                kinds = [(e.kind.value, e.name) for e in self.events]
                raise AssertionError(f"condition not met within {timeout}s; events: {kinds}")
            return list(self.events)

    def wait_kind(self, kind: procman.EventKind, name: str, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_for(lambda evs: sum(e.kind is kind and e.name == name for e in evs) >= count, timeout)

    def of(self, kind: procman.EventKind, name: str | None = None) -> list[procman.Event]:
        with self._cond:
            return [e for e in self.events if e.kind is kind and (name is None or e.name == name)]


def _live_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, fields after the command name) of every live (non-zombie) process, from /proc/PID/stat."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if fields and fields[0] != b"Z":
            yield int(entry), fields


def proc_table() -> dict[int, tuple[int, str]]:
    """Every live (non-zombie) process: pid -> (parent pid, state letter), read from /proc."""
    return {pid: (int(fields[1]), fields[0].decode()) for pid, fields in _live_stats()}


def session_members(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (a script started with start_new_session): pid -> command line."""
    found: dict[int, str] = {}
    for pid, fields in _live_stats():
        if int(fields[3]) == sid:
            line = cmdline(pid)
            if line is not None:
                found[pid] = line
    return found


def descendants(roots: set[int] | list[int]) -> set[int]:
    """Every live process whose ancestry passes through one of ``roots`` (roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in proc_table().items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, T, Z...), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return proc_state(pid) not in (None, "Z")


def cmdline(pid: int) -> str | None:
    """The command line (the title procman sets) of ``pid``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


class Events:
    """A pool event hook that records events and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.items: list[PoolEvent] = []
        self.cond = threading.Condition()

    def __call__(self, event: PoolEvent) -> None:
        with self.cond:
            self.items.append(event)
            self.cond.notify_all()

    def wait(self, pred: Callable[[list[PoolEvent]], bool], timeout: float = 15.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.items), timeout), [e.kind for e in self.items]

    def names(self) -> set[str]:
        with self.cond:
            return {e.name for e in self.items}

    def of(self, kind: PoolEventKind) -> list[PoolEvent]:
        with self.cond:
            return [e for e in self.items if e.kind is kind]


def titled(prefix: str) -> set[int]:
    """Pids of live processes whose title (command line) starts with ``prefix``.

    A process forking or posix_spawn()ing (a worker starting its shell guard) has, for a moment, a
    child that shares its memory and so shows its title; that child, whose parent has the same
    title, is left out: killing it instead of the titled process would prove nothing.
    """
    found = {pid: int(f[1]) for pid, f in _live_stats() if (cmdline(pid) or "").startswith(prefix)}
    return {pid for pid, parent in found.items() if parent not in found}


def wait_until(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def run_script(
    tmp_path: Path,
    code: str,
    *,
    how: str = "file",
    args: tuple[str, ...] = (),
    timeout: float = 90,
    pythonpath: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a user would (``how``: "file", "stdin", "repl" or "-c"), in a session of its
    own, importing from ``pythonpath`` (default ``tmp_path``); nothing may outlive it."""
    code = textwrap.dedent(code)
    if how == "file":
        script = tmp_path / "script.py"
        script.write_text(code)
        cmd = [sys.executable, str(script), *args]
        stdin = None
    elif how == "stdin":
        cmd, stdin = [sys.executable, "-", *args], code
    elif how == "repl":  # the interactive interpreter reading the lines as typed
        cmd, stdin = [sys.executable, "-i", "-q", *args], code
    else:
        cmd, stdin = [sys.executable, "-c", code, *args], None
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(pythonpath or tmp_path)},
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        wait_until(lambda: not session_members(proc.pid), 5, "the script's processes to end")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
