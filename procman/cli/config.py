"""The procman config file (TOML): daemons, the worker pool and timed jobs, checked before anything runs.

::

    [procman]                      # optional
    start_timeout = 30             # seconds for every daemon to be ready
    stop_timeout = 30              # seconds for everything to stop
    start_method = "forkserver"    # or "fork", "spawn"
    socket = "run/app.sock"        # control socket, relative to this file (default: STEM-HASH.sock
                                   # in procman.cli.control.runtime_dir(), HASH from this file's path)

    [daemons.web]                  # the key is the daemon's name
    factory = "app.web:HttpServer" # a Python daemon: a callable returning one, called with...
    args = []                      # ...these positional and
    kwargs = { port = 8080 }       # ...keyword arguments
    # command = ["gunicorn", "app:app"]   (instead of factory: an external program)
    env = { LOG_LEVEL = "info" }
    cwd = "."                      # relative to the config file's directory
    restart = "always"             # or "on-failure" (default), "never"
    backoff = { initial = 0.5, factor = 2, max = 30, jitter = 0.1 }
    max_restarts = 5               # intensity: more restarts than this within `within` s -> give up
    within = 60
    reset_after = 10
    start_timeout = 10
    stop_timeout = 10              # stop() may take this long before SIGTERM
    term_timeout = 5               # then SIGKILL
    watchdog = 30                  # seconds without procman.heartbeat() -> stack dump + kill
    depends_on = ["db"]            # start after db is ready, stop before it

    [pool]                         # the worker pool the jobs run on (optional)
    workers = 2
    start_method = "forkserver"
    max_tasks_per_worker = 1000
    max_memory_mb = 512
    # backend = "dask"             # the jobs on a Dask cluster (pip install 'procworks[dask]'):
    # address = "tcp://sched:8786" # its scheduler, or none for a local cluster of `workers`

    [store]                        # the jobs outlive restarts, run once across hosts (optional)
    url = "sqlite:///jobs.db"      # relative to this file; or "postgresql://user@db/app" (several hosts)
    poll = 0.5                     # seconds: changes made on another host show within this
    lease = 10                     # seconds: a dead host's claims go to the others after this
    history = 100                  # finished runs kept per schedule

    [jobs.primes]
    function = "app.jobs:count_primes"
    args = [200000]
    every = "5s"                   # or: cron = "*/5 * * * *" (with timezone = "Europe/Berlin"),
                                   #     at = 2026-12-01T02:00:00Z (once)
    timeout = 60
    retries = 1
    overlap = "skip"               # a run due while the last one still runs: "skip" or "queue"

Every mistake is a :class:`ConfigError` naming the file, the table, the key, what was found and
what was expected, on one line, raised before any process starts. What ``procman run`` would trip
over later is refused here too: durations beyond 100 years (timers overflow) or, for ``every``,
under 1 ms; ``at`` times that leave years 1-9999 in UTC; NUL characters (no path, argument or
environment variable can hold one); environment names with ``=``; a job's arguments that its
function does not take; integers beyond 64 bits and values nested more than 64 levels deep.
Factories are called and functions imported at load time, in the parent, so an import error or a
bad argument is caught here too.
"""

from __future__ import annotations

import difflib
import inspect
import os
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from procman import DaemonError, Restart, RestartPolicy, check_daemon, check_name, dependency_cycle

from .configured import AsyncConfiguredDaemon, ConfiguredDaemon
from .control import SUN_PATH_MAX
from .model import Config, DaemonConfig, JobConfig, PoolConfig
from .tables import TOP, ConfigError, Table, import_ref, show
from .toml import beyond_limits, parse_toml

START_METHODS = ("forkserver", "fork", "spawn")  # what Manager and Pool take (their docstrings)
MAX_WORKERS = 1024  # a [pool] larger than this runs out of processes or file descriptors
MAX_INSTANCES = 256  # instances = N of one daemon
MAX_MEMORY_MB = float(1 << 30)  # 1 PiB: [pool] max_memory_mb beyond it is a typo


# -- loading ----------------------------------------------------------------------------------------


def _with_instance(value: Any, instance: int) -> Any:
    """``value`` with ``{instance}`` replaced by the number in every string of it."""
    if isinstance(value, str):
        return value.replace("{instance}", str(instance))
    if isinstance(value, list):
        return [_with_instance(v, instance) for v in value]
    if isinstance(value, dict):
        return {k: _with_instance(v, instance) for k, v in value.items()}
    return value


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file; raise ConfigError (naming file, table and key) if it is wrong."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; give the path of a procman TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data = parse_toml(p, text)
    found = beyond_limits(data)
    if found is not None:
        keys, problem = found
        raise ConfigError(f"{p}: [{'.'.join(keys[:-1]) or TOP}] {keys[-1]}: {problem}")
    return _Loader(p).load(data)


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.resolve().parent
        self.names: dict[str, str] = {}  # name -> "daemons"/"jobs", to keep names unique across both
        self.stored = False  # the file has a [store]

    def load(self, data: dict[str, Any]) -> Config:
        top = Table(self.path, TOP, data)
        cfg = Config(self.path)
        # The config's directory is importable, as the current directory is for `python -m`.
        if str(self.base) not in sys.path:
            sys.path.insert(0, str(self.base))
        section = top.table("procman")
        if section is not None:
            cfg.start_timeout = section.seconds("start_timeout", 30.0, positive=True) or 30.0
            cfg.stop_timeout = section.seconds("stop_timeout", 30.0, positive=True) or 30.0
            cfg.start_method = section.choice("start_method", "forkserver", START_METHODS)
            cfg.socket = self.socket(section)
            cfg.metrics = self.metrics(section)
            section.check_unknown()
        cfg.daemons = [d for name, t in top.tables("daemons") for d in self.instances(name, t)]
        self.expand_groups(cfg)
        pool = top.table("pool")
        if pool is not None:
            cfg.pool = PoolConfig(
                workers=pool.integer("workers", None, minimum=1, maximum=MAX_WORKERS),
                start_method=pool.choice("start_method", "forkserver", START_METHODS),
                max_tasks_per_worker=pool.integer("max_tasks_per_worker", None, minimum=1),
                max_memory_mb=pool.optional_number("max_memory_mb", above=True, maximum=MAX_MEMORY_MB),
                backend=pool.choice("backend", "local", ("local", "dask")),
                address=pool.string("address"),
            )
            self.dask(pool, cfg.pool)
            pool.check_unknown()
        # With a store, a one-off job's time may have passed: an earlier start added and ran it.
        self.stored = isinstance(data.get("store"), dict)
        cfg.jobs = [self.job(name, t) for name, t in top.tables("jobs")]
        store = top.table("store")
        if (cfg.jobs or store is not None) and cfg.pool is None:
            cfg.pool = PoolConfig()
        if store is not None:
            assert cfg.pool is not None
            cfg.pool.store = self.store(store)
            store.check_unknown()
        top.check_unknown()
        if not cfg.daemons and not cfg.jobs:
            raise ConfigError(f"{self.path}: nothing to run: add a [daemons.NAME] or a [jobs.NAME] table")
        self.check_dependencies(cfg)
        return cfg

    def dask(self, table: Table, pool: PoolConfig) -> None:
        """``backend = "dask"``: what a Dask cluster cannot do is refused here, with the reason."""
        if pool.backend != "dask":
            if pool.address is not None:
                raise table.fail("address", 'is the Dask scheduler\'s: give it with backend = "dask"')
            return
        for key, value, why in (
            ("max_tasks_per_worker", pool.max_tasks_per_worker, "give the Dask workers a lifetime instead"),
            ("max_memory_mb", pool.max_memory_mb, "set the Dask workers' memory_limit instead"),
        ):
            if value is not None:
                raise table.fail(key, f'is not supported with backend = "dask": {why}')
        import workers

        try:
            workers.DaskBackend(pool.address)  # the extra is installed, the address well formed
        except ImportError as exc:
            raise table.fail("backend", f"{exc}") from exc
        except (TypeError, ValueError) as exc:
            raise table.fail("address", str(exc)) from exc

    def store(self, t: Table) -> Any:
        """``[store]``: a workers.Store, checked as Pool(store=...) checks it (the store is opened
        when the pool starts); a relative SQLite path is relative to the config file."""
        import workers

        url = t.string("url")
        if url is None:
            raise t.fail("url", 'is missing: give the store\'s URL, e.g. "sqlite:///jobs.db"')
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and len(url) > len(prefix):
            url = prefix + str(self.base / url[len(prefix) :])
        poll = t.seconds("poll", 0.5, positive=True)
        lease = t.seconds("lease", 10.0, positive=True)
        history = t.integer("history", 100, minimum=1)
        try:
            return workers.Store(url, poll=poll or 0.5, lease=lease or 10.0, history=history or 100)
        except ValueError as exc:
            message = str(exc)
            key = next((k for k in ("poll", "lease", "history") if message.startswith(k + "=")), "url")
            raise t.fail(key, message.split(": ", 1)[-1] if key == "url" else message) from exc

    def socket(self, t: Table) -> Path | None:
        """``[procman] socket``: what ControlServer.start() needs of it that does not change."""
        sock = t.string("socket")
        if sock is None:
            return None
        path = self.base / sock
        size = len(os.fsencode(path))
        if size > SUN_PATH_MAX:
            raise t.error_at(
                "socket",
                sock,
                f"a path of at most {SUN_PATH_MAX} bytes ({path} has {size})",
            )
        if not os.path.isdir(path.parent):
            raise t.error_at("socket", sock, f"a path in an existing directory ({path.parent} is not one)")
        if os.path.isdir(path):
            raise t.error_at("socket", sock, f"the path of a socket file ({path} is a directory)")
        return path

    def metrics(self, t: Table) -> tuple[str, int] | None:
        """``[procman] metrics``: a port (on 127.0.0.1) or "HOST:PORT" for GET /metrics."""
        value = t.get("metrics")
        if value is None:
            return None
        expected = 'a port such as 9464 (on 127.0.0.1) or "HOST:PORT" such as "0.0.0.0:9464"'
        host, port = "127.0.0.1", value
        if isinstance(value, str):
            host, sep, port_text = value.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port_text.isdigit():
                raise t.error_at("metrics", value, expected)
            port = int(port_text)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise t.error_at("metrics", value, expected + " (ports are 1-65535)")
        return host, port

    def fingerprint(self, t: Table, *extra: bytes) -> str:
        """What `procman reload` compares: the table as written (and the files it names)."""
        import hashlib

        import orjson

        digest = hashlib.sha256(orjson.dumps(t.data, option=orjson.OPT_SORT_KEYS, default=str))
        for part in extra:
            digest.update(part)
        return digest.hexdigest()

    def env_file(self, t: Table) -> tuple[dict[str, str], bytes]:
        """``env_file = ".env"``: NAME=value lines (``#`` comments, ``export`` and quotes allowed),
        relative to the config file. Returns the variables and the file's bytes."""
        ref = t.string("env_file")
        if ref is None:
            return {}, b""
        path = self.base / ref
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise t.error_at("env_file", ref, f"a readable file ({path}: {exc.strerror or exc})") from None
        env: dict[str, str] = {}
        for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            text = text.removeprefix("export ").lstrip()
            key, sep, value = text.partition("=")
            key = key.strip()
            if not sep or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
                raise t.fail("env_file", f"{path} line {number}: expected NAME=value, found {show(line)}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            elif " #" in value:
                value = value.split(" #", 1)[0].rstrip()
            if "\0" in value:
                raise t.fail("env_file", f"{path} line {number}: {key} holds a NUL character")
            env[key] = value
        return env, raw

    def claim(self, t: Table, kind: str, name: str) -> None:
        try:
            check_name(name)
        except DaemonError:
            raise t.fail(
                None,
                f"{name!r} is not a valid name: use lowercase words of letters and digits joined by "
                "hyphens, starting with a letter (e.g. 'http-server')",
            ) from None
        if name in self.names:
            raise t.fail(
                None, f"the name {name!r} is already used by [{self.names[name]}.{name}]; names are unique"
            )
        self.names[name] = kind

    def instances(self, name: str, t: Table) -> list[DaemonConfig]:
        """``instances = N``: N daemons NAME-0 ... NAME-(N-1), ``{instance}`` in their strings
        replaced by the number (and PROCMAN_INSTANCE set to it); else the one daemon NAME."""
        count = t.integer("instances", None, minimum=1, maximum=MAX_INSTANCES)
        if count is None:
            return [self.daemon(name, t)]
        self.claim(t, "daemons", name)
        made = []
        for i in range(count):
            data = _with_instance({k: v for k, v in t.data.items() if k != "instances"}, i)
            env = data.get("env", {})
            if isinstance(env, dict):
                data["env"] = {"PROCMAN_INSTANCE": str(i), **env}
            one = Table(t.file, t.name, data)
            made.append(self.daemon(f"{name}-{i}", one, group=name))
        t.known |= set(t.data)  # each key was read (and checked) on every instance's table
        return made

    def expand_groups(self, cfg: Config) -> None:
        """``depends_on = ["web"]`` of a group means every instance of it."""
        groups: dict[str, list[str]] = {}
        for d in cfg.daemons:
            if d.group is not None:
                groups.setdefault(d.group, []).append(d.name)
        for d in cfg.daemons:
            if any(dep in groups for dep in d.depends_on):
                deps = [x for dep in d.depends_on for x in groups.get(dep, [dep])]
                d.depends_on = tuple(x for x in dict.fromkeys(deps) if x != d.name)

    def daemon(self, name: str, t: Table, group: str | None = None) -> DaemonConfig:
        self.claim(t, "daemons", name)
        from_file, env_bytes = self.env_file(t)
        env = {**from_file, **self.env(t)}  # the table's env wins over the file's
        cwd = self.cwd(t)
        module: str | None = None
        if t.has("factory") == t.has("command"):
            raise t.fail(None, "give exactly one of factory = 'package.module:callable' or command = [...]")
        if t.has("command"):
            from procman import CommandDaemon

            argv = self.command(t)
            # a Python program's prints show as they happen, not when its buffer fills
            env.setdefault("PYTHONUNBUFFERED", "1")
            for key in ("args", "kwargs"):
                if t.has(key):
                    raise t.fail(key, "applies to factory daemons only; put a command's arguments in command")
            daemon: object = CommandDaemon(name, argv, env=env or None, cwd=cwd)
        else:
            ref = t.string("factory")
            assert ref is not None
            factory = import_ref(t, "factory", ref)
            if not callable(factory):
                raise t.error_at("factory", ref, "a callable (a class or a function returning a daemon)")
            args, kwargs = self.arguments(t)
            try:
                inner = factory(*args, **kwargs)
            except Exception as exc:
                raise t.fail("factory", f"{ref}(...) raised {type(exc).__name__}: {exc}") from exc
            missing = [m for m in ("start", "stop") if not callable(getattr(inner, m, None))]
            if missing:
                raise t.fail(
                    "factory",
                    f"{ref}(...) returned {type(inner).__name__}, which lacks "
                    + " and ".join(f"{m}()" for m in missing)
                    + "; a daemon has start() and stop() methods",
                )
            module = ref.partition(":")[0]
            wrapper = (
                AsyncConfiguredDaemon
                if inspect.iscoroutinefunction(inner.start) or inspect.iscoroutinefunction(inner.stop)
                else ConfiguredDaemon
            )
            daemon = wrapper(name, inner, env, cwd)
        restart = t.choice("restart", Restart.ON_FAILURE.value, tuple(r.value for r in Restart))
        backoff = t.table("backoff")
        policy_args: dict[str, Any] = {"restart": restart}
        if backoff is not None:
            policy_args["backoff_initial"] = backoff.seconds("initial", 0.1) or 0.0
            policy_args["backoff_factor"] = backoff.number("factor", 2.0, minimum=1.0)
            policy_args["backoff_max"] = backoff.seconds("max", 30.0) or 0.0
            policy_args["jitter"] = backoff.number("jitter", 0.1)
            if policy_args["jitter"] >= 1:
                raise backoff.error_at("jitter", policy_args["jitter"], "a fraction below 1, e.g. 0.1")
            backoff.check_unknown()
        policy_args["max_restarts"] = t.integer("max_restarts", 5, minimum=0)
        policy_args["within"] = t.seconds("within", 60.0, positive=True)
        policy_args["reset_after"] = t.seconds("reset_after", 10.0)
        try:
            policy = RestartPolicy(**policy_args)
        except (DaemonError, ValueError) as exc:
            raise t.fail(None, f"invalid restart policy: {exc}") from None
        deps = t.get("depends_on", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise t.error_at("depends_on", deps, 'a list of daemon names, e.g. ["db"]')
        if name in deps:
            raise t.fail("depends_on", f"{name!r} cannot depend on itself")
        cfg = DaemonConfig(
            name=name,
            daemon=daemon,
            module=module,
            restart=policy,
            start_timeout=t.seconds("start_timeout", 30.0, positive=True) or 30.0,
            stop_timeout=t.seconds("stop_timeout", 10.0) or 0.0,
            term_timeout=t.seconds("term_timeout", 5.0) or 0.0,
            watchdog=t.seconds("watchdog", None, positive=True),
            depends_on=tuple(deps),
            autostart=self.boolean(t, "autostart", True),
            start_retries=t.integer("start_retries", 0, minimum=0, maximum=1000) or 0,
            log_file=self.log_file(t),
            log_size=self.byte_size(t, "log_size", 10 * 1024 * 1024),
            log_count=t.integer("log_count", 5, minimum=1, maximum=1000) or 5,
            max_memory_mb=t.optional_number("max_memory_mb", above=True, maximum=MAX_MEMORY_MB),
            fingerprint=self.fingerprint(t, env_bytes),
            group=group,
        )
        t.check_unknown()
        try:  # what register() will check: that it pickles, among the rest
            check_daemon(daemon, **cfg.options())
        except DaemonError as exc:
            raise t.fail(None, str(exc)) from None
        return cfg

    def log_file(self, t: Table) -> Path | None:
        ref = t.string("log_file")
        if ref is None:
            return None
        path = self.base / ref
        # os.path: False for any OSError (a name too long, a NUL), where pathlib may raise
        if os.path.isdir(path) or not ref or ref.endswith("/"):
            raise t.error_at("log_file", ref, f"the path of a file ({path} is a directory)")
        if any(len(os.fsencode(part)) > 255 for part in path.parts) or "\0" in ref:
            raise t.error_at("log_file", ref, "a path whose names have at most 255 bytes and no NUL")
        parent = next((p for p in path.parents if os.path.exists(p)), None)
        if parent is None or not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise t.error_at("log_file", ref, f"a path procman may write ({path.parent} is not writable)")
        return path

    @staticmethod
    def byte_size(t: Table, key: str, default: int) -> int:
        """A size in bytes: 1048576, "512KB", "10MB", "1GB" (powers of 1024), at least 1 KB."""
        value = t.get(key, default)
        units = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
        size: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            text = value.strip().upper().replace(" ", "")
            number = text.rstrip("KMGB")
            unit = text[len(number) :]
            if number.isdigit() and unit in units:
                size = int(number) * units[unit]
        if size is None or not 1024 <= size <= 1024**4:
            raise t.error_at(key, value, 'a size from 1KB to 1TB, e.g. 10485760 or "10MB"')
        return size

    @staticmethod
    def boolean(t: Table, key: str, default: bool) -> bool:
        value = t.get(key, default)
        if not isinstance(value, bool):
            raise t.error_at(key, value, "true or false")
        return value

    def command(self, t: Table) -> list[str]:
        value = t.get("command")
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise t.error_at("command", value, f"a command line shlex can split ({exc})") from None
        elif isinstance(value, list) and all(isinstance(a, str) for a in value):
            argv = list(value)
        else:
            raise t.error_at("command", value, 'a list of strings such as ["python", "-m", "http.server"]')
        if not argv or not argv[0]:
            raise t.error_at("command", value, "a non-empty command")
        if any("\0" in a for a in argv):  # execve() cannot pass them: the start would fail
            raise t.error_at("command", value, "a command without NUL characters")
        return argv

    def env(self, t: Table) -> dict[str, str]:
        env = t.get("env", {})
        if not isinstance(env, dict):
            raise t.error_at("env", env, 'a table of NAME = "value" strings')
        for key, value in env.items():
            # The child's os.environ / execve() refuse these: the start would fail, not the check.
            if not key or "=" in key or "\0" in key:
                raise t.fail(
                    "env", f"{show(key)} is not a variable name; use one without '=' or NUL (e.g. LOG_LEVEL)"
                )
            if not isinstance(value, str):
                raise t.error_at(f"env.{key}", value, 'a string (quote numbers: PORT = "8080")')
            if "\0" in value:
                raise t.error_at(f"env.{key}", value, "a string without NUL characters")
        return dict(env)

    def cwd(self, t: Table) -> str | None:
        cwd = t.string("cwd")
        if cwd is None:
            return None
        path = self.base / cwd
        if not os.path.isdir(path):  # False for any OSError (a name too long, ...), unlike Path
            raise t.error_at("cwd", cwd, f"a directory ({path} is not one)")
        return str(path)

    def arguments(self, t: Table) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args = t.get("args", [])
        if not isinstance(args, list):
            raise t.error_at("args", args, 'a list of positional arguments, e.g. [1, "a"]')
        kwargs = t.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise t.error_at("kwargs", kwargs, "a table of keyword arguments, e.g. { port = 8080 }")
        return tuple(args), dict(kwargs)

    def job(self, name: str, t: Table) -> JobConfig:
        self.claim(t, "jobs", name)
        ref = t.string("function")
        if ref is None:
            raise t.fail(None, "missing function = 'package.module:function', the job to run")
        fn = import_ref(t, "function", ref)
        if not callable(fn):
            raise t.error_at("function", ref, "a callable")
        args, kwargs = self.arguments(t)
        given = [k for k in ("every", "cron", "at") if t.has(k)]
        if len(given) != 1:
            found = " and ".join(given) if given else "none of them"
            raise t.fail(
                None,
                f'give exactly one of every = "30s", cron = "*/5 * * * *" or at = 2026-12-01T02:00:00Z '
                f"(found {found})",
            )
        from workers import Cron, Every, ScheduleError, check_job

        every = t.seconds("every", None, positive=True)
        if every is not None:
            try:
                Every(every)  # checks the interval as Pool.schedule(every=...) will
            except ScheduleError as exc:
                raise t.fail("every", str(exc)) from None
        cron = t.string("cron")
        tz = t.string("timezone")
        if tz is not None and cron is None:
            raise t.fail("timezone", "applies to cron schedules only")
        if cron is not None:
            try:
                Cron(cron, tz)  # checks the expression field by field, then the time zone
            except ScheduleError as exc:
                message = str(exc)
                if message.startswith("tz="):
                    raise t.fail("timezone", "timezone = " + message.removeprefix("tz=")) from None
                raise t.fail("cron", message.removeprefix("cron ")) from None
        at = self.at(t) if t.has("at") else None
        job = JobConfig(
            name=name,
            function=fn,
            args=args,
            kwargs=kwargs,
            every=every,
            cron=cron,
            timezone=tz,
            at=at,
            timeout=t.seconds("timeout", None, positive=True),
            retries=t.integer("retries", 0, minimum=0) or 0,
            overlap=t.choice("overlap", "skip", ("skip", "queue")),
            max_instances=t.integer("max_instances", 1, minimum=1) or 1,
            fingerprint=self.fingerprint(t),
        )
        t.check_unknown()
        self.check_call(t, fn, ref, args, kwargs)
        try:  # what the pool will check at submit time: that the job pickles
            check_job(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise t.fail(None, f"the job cannot be sent to a worker: {exc}") from None
        return job

    def check_call(
        self, t: Table, fn: Callable[..., Any], ref: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """That ``fn(*args, **kwargs)`` binds: else every run would fail with a TypeError."""
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # no signature to read (some builtins): the run will tell
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            key = "kwargs" if kwargs else "args"
            raise t.fail(key, f"{ref} cannot be called with these arguments: {exc}") from None

    def at(self, t: Table) -> datetime:
        value = t.get("at")
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise t.error_at("at", value, "a date-time such as 2026-12-01T02:00:00Z") from None
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime.combine(value, time())
        if not isinstance(value, datetime):
            raise t.error_at("at", value, "a date-time such as 2026-12-01T02:00:00Z")
        try:
            utc = value.astimezone(UTC)
        except (OverflowError, ValueError):  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
            raise t.error_at(
                "at", value.isoformat(), "a date-time that is still within years 1-9999 in UTC"
            ) from None
        if utc < datetime.now(UTC) and not self.stored:
            raise t.error_at(
                "at", value.isoformat(), "a time in the future (a one-off job in the past never runs)"
            )
        return value

    def check_dependencies(self, cfg: Config) -> None:
        names = {d.name for d in cfg.daemons}
        for d in cfg.daemons:
            for dep in d.depends_on:
                if dep not in names:
                    hint = difflib.get_close_matches(dep, sorted(names), n=1)
                    raise ConfigError(
                        f"{self.path}: [daemons.{d.name}] depends_on: found {dep!r}, expected the name of a "
                        f"daemon in this file" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    )
        autostart = {d.name: d.autostart for d in cfg.daemons}
        for d in cfg.daemons:
            for dep in d.depends_on:
                if d.autostart and not autostart[dep]:
                    raise ConfigError(
                        f"{self.path}: [daemons.{d.name}] depends_on: {dep!r} has autostart = false, "
                        f"so {d.name!r} could not start with the others; give it autostart = false too"
                    )
        cycle = dependency_cycle({d.name: d.depends_on for d in cfg.daemons})
        if cycle:
            raise ConfigError(
                f"{self.path}: [daemons.{cycle[0]}] depends_on: found a cycle "
                f"{' -> '.join(cycle)}, expected dependencies that end somewhere"
            )
