"""``procman top``: a live view of a running procman, over its control socket.

On a terminal: the alternate screen, redrawn every interval and at each key; up/down (or j/k)
choose a daemon, ``r`` restarts it, ``s`` stops it, ``S`` starts it, ``l`` shows its log (the last
lines, refreshed; any key returns), ``q`` quits. Elsewhere (a pipe, a file): the same tables
printed every interval, ``count`` times or until interrupted.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .control import ControlError, request
from .main import _ago as ago
from .main import table_lines, when

KEYS = "up/down choose  r restart  s stop  S start  l log  q quit"


def _ago(seconds: float | None) -> str:
    return ago(seconds) if seconds is not None else "-"


def _mb(value: int | None) -> str:
    return f"{value / 1048576:.1f}M" if value is not None else "-"


def render(status: dict[str, Any], jobs: list[dict[str, Any]] | None) -> tuple[list[str], list[str]]:
    """The screen's lines, and the daemons' names in the order of their rows."""
    lines = [
        f"procman pid {status.get('pid')} since {status.get('started')}  {status.get('config')}"
        + ("  (stopping)" if status.get("stopping") else "")
    ]
    daemons = status.get("daemons", [])
    rows = [("DAEMON", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "CPU%", "RSS")]
    for d in daemons:
        last = d.get("last_exit")
        cpu = d.get("cpu_percent")
        rows.append(
            (
                d["name"],
                d["state"],
                str(d["pid"]) if d.get("pid") is not None else "-",
                _ago(d.get("uptime")),
                str(d.get("restarts", 0)),
                f"{last['reason']} at {last['time'][11:]}" if last else "-",
                f"{cpu:.1f}" if cpu is not None else "-",
                _mb(d.get("rss_bytes")),
            )
        )
    lines += table_lines(rows)
    if jobs:
        jrows = [("JOB", "TRIGGER", "STATE", "NEXT RUN", "RUNS", "FAILED", "LATE (MEAN)", "LAST OUTCOME")]
        for j in jobs:
            last = j.get("last_outcome") or "-"
            jrows.append(
                (
                    j["name"],
                    j["trigger"],
                    j["state"],
                    when(j.get("next_run")),
                    str(j["runs"]),
                    str(j["failures"]),
                    f"{j['lateness_mean'] * 1000:.2f} ms" if j.get("lateness_mean") is not None else "-",
                    last if len(last) <= 40 else last[:37] + "...",
                )
            )
        lines += ["", *table_lines(jrows)]
    pool = status.get("pool")
    if pool:
        p50 = pool.get("lateness_p50")
        late = f"{p50 * 1000:.2f} ms" if p50 is not None else "-"
        lines += [
            "",
            f"pool: {pool['workers']} workers ({pool['idle_workers']} idle), {pool['running']} running, "
            f"{pool['queued']} queued, {pool['scheduled']} scheduled; done {pool['done']}, failed "
            f"{pool['failed']}, worker restarts {pool['worker_restarts']}; lateness p50 {late}",
        ]
    return lines, [d["name"] for d in daemons]


def _snapshot(path: Path, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    status = request(path, {"cmd": "status"}, timeout)
    if not status.get("ok"):
        raise ControlError(status.get("error", "status failed"))
    jobs = None
    if status.get("pool") is not None:
        answer = request(path, {"cmd": "jobs"}, timeout)
        jobs = answer.get("jobs") if answer.get("ok") else None
    return status, jobs


def top(path: Path, *, interval: float, count: int | None, timeout: float) -> int:
    if sys.stdin.isatty() and sys.stdout.isatty():
        return _Live(path, interval, count, timeout).run()
    n = 0
    try:
        while count is None or n < count:
            if n:
                time.sleep(interval)
            status, jobs = _snapshot(path, timeout)
            lines, _ = render(status, jobs)
            print(time.strftime("%H:%M:%S"), *lines, "", sep="\n", flush=True)
            n += 1
    except ControlError as exc:
        if n == 0:
            raise
        print(f"procman: {exc}", file=sys.stderr)  # procman went away: the view ends
        return 1
    except BrokenPipeError:
        pass
    return 0


class _Live:
    def __init__(self, path: Path, interval: float, count: int | None, timeout: float) -> None:
        self.path, self.interval, self.count, self.timeout = path, interval, count, timeout
        self.selected = 0
        self.names: list[str] = []
        self.message = ""
        self.log_of: str | None = None

    def run(self) -> int:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        out = sys.stdout
        out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
        try:
            tty.setcbreak(fd)
            frames = 0
            while self.count is None or frames < self.count:
                self.draw()
                frames += 1
                keys = self.keys(fd)
                if "q" in keys:
                    break
                for key in keys:
                    self.act(key)
        except ControlError as exc:
            self.message = str(exc)
            return 1
        except KeyboardInterrupt:
            pass
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
            if self.message and self.message.startswith("no procman"):
                print(f"procman: {self.message}", file=sys.stderr)
        return 0

    def keys(self, fd: int) -> list[str]:
        """The keys typed within the interval (several may come in one read), arrows as j/k."""
        ready, _, _ = select.select([fd], [], [], self.interval)
        if not ready:
            return []
        data = os.read(fd, 64).decode(errors="replace")
        for arrow, key in (("\x1b[A", "k"), ("\x1b[B", "j"), ("\x1bOA", "k"), ("\x1bOB", "j")):
            data = data.replace(arrow, key)
        return [c for c in data if c != "\x1b"]

    def act(self, key: str) -> None:
        if self.log_of is not None:  # any key leaves the log
            self.log_of = None
            return
        if key in ("j", "k") and self.names:
            step = 1 if key == "j" else -1
            self.selected = (self.selected + step) % len(self.names)
            return
        if not self.names:
            return
        name = self.names[self.selected]
        if key == "l":
            self.log_of = name
            return
        cmd = {"r": "restart", "s": "stop", "S": "start"}.get(key)
        if cmd is None:
            return
        self.message = f"{cmd} {name}..."
        self.draw()
        answer = request(self.path, {"cmd": cmd, "name": name}, self.timeout)
        if answer.get("ok"):
            pid = f" (pid {answer['pid']})" if answer.get("pid") else ""
            self.message = f"{name}: {answer.get('outcome') or cmd + ' done'}{pid}"
        else:
            self.message = f"{name}: {answer.get('error', 'failed')}"

    def draw(self) -> None:
        width, height = shutil.get_terminal_size((100, 30))
        if self.log_of is not None:
            ask = {"cmd": "logs", "name": self.log_of, "lines": max(1, height - 2)}
            answer = request(self.path, ask, self.timeout)
            body = [f"log of {self.log_of} (any key returns)", *answer.get("lines", [])]
        else:
            status, jobs = _snapshot(self.path, self.timeout)
            lines, self.names = render(status, jobs)
            if self.names:
                self.selected = min(self.selected, len(self.names) - 1)
            body = list(self._marked([line[:width] for line in lines]))
            body += ["", KEYS, self.message]
        body = [line if line.startswith("\x1b[7m") else line[:width] for line in body]
        screen = "\x1b[H\x1b[2J" + "\r\n".join(body[:height])
        sys.stdout.write(screen)
        sys.stdout.flush()

    def _marked(self, lines: list[str]) -> Iterator[str]:
        """The lines, the selected daemon's row in reverse video (row 0 is the title, 1 the head)."""
        for i, line in enumerate(lines):
            if self.names and i == self.selected + 2:
                yield f"\x1b[7m{line}\x1b[0m"
            else:
                yield line
