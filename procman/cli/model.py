"""What a config file describes, once checked: its daemons, its pool and its timed jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from procman import RestartPolicy


@dataclass
class DaemonConfig:
    name: str
    daemon: object  # a Daemon: the factory's product (wrapped for env/cwd) or a CommandDaemon
    module: str | None  # the factory's module, preloaded in the forkserver
    restart: RestartPolicy
    start_timeout: float
    stop_timeout: float
    term_timeout: float
    watchdog: float | None
    depends_on: tuple[str, ...]
    autostart: bool = True
    start_retries: int = 0
    max_memory_mb: float | None = None  # killed (then restarted by its policy) beyond this RSS
    fingerprint: str = ""  # of its table (and env_file): `procman reload` restarts it when it changes
    log_file: Path | None = None  # its lines also go there, rotated at log_size bytes, log_count files
    log_size: int = 10 * 1024 * 1024
    log_count: int = 5
    group: str | None = None  # `instances = N`: the table's name, shared by its N instances

    def options(self) -> dict[str, Any]:
        """The keyword arguments of Manager.register() for this daemon."""
        return {
            "restart": self.restart,
            "start_timeout": self.start_timeout,
            "stop_timeout": self.stop_timeout,
            "term_timeout": self.term_timeout,
            "watchdog": self.watchdog,
            "depends_on": self.depends_on,
            "autostart": self.autostart,
            "start_retries": self.start_retries,
        }


@dataclass
class JobConfig:
    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    every: float | None
    cron: str | None
    timezone: str | None
    at: datetime | None
    timeout: float | None
    retries: int
    overlap: str
    max_instances: int
    fingerprint: str = ""  # of its table: `procman reload` schedules it anew when it changes

    @property
    def trigger(self) -> str:
        if self.every is not None:
            return f"every {self.every:g}s"
        if self.cron is not None:
            return f"cron {self.cron!r}" + (f" ({self.timezone})" if self.timezone else "")
        assert self.at is not None
        return f"at {self.at.isoformat()}"


@dataclass
class PoolConfig:
    workers: int | None = None
    start_method: str = "forkserver"
    max_tasks_per_worker: int | None = None
    max_memory_mb: float | None = None
    backend: str = "local"  # or "dask"
    address: str | None = None  # the Dask scheduler's; None: a local cluster made for the pool
    store: Any = None  # a workers.Store ([store]): timed jobs and schedules outlive restarts


@dataclass
class Config:
    path: Path
    start_timeout: float = 30.0
    stop_timeout: float = 30.0
    start_method: str = "forkserver"
    socket: Path | None = None
    metrics: tuple[str, int] | None = None  # [procman] metrics: the HTTP endpoint's address
    daemons: list[DaemonConfig] = field(default_factory=list)
    pool: PoolConfig | None = None
    jobs: list[JobConfig] = field(default_factory=list)
