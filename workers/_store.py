"""The store's SQL: the schema and its upgrades, the two dialects, and each statement the pool makes.

One module for SQLite (stdlib ``sqlite3``) and PostgreSQL (psycopg 3, the ``postgres`` extra): the
statements are the same but for three things the :class:`Dialect` holds, the column types, the
placeholder, and how a claim locks (``BEGIN IMMEDIATE`` takes SQLite's one writer lock for the
transaction; PostgreSQL locks the rows it claims with ``FOR UPDATE SKIP LOCKED``, so two hosts
claiming at once take disjoint batches and neither waits).

Tables (prefix ``procworks_``):

* ``meta``: the schema version, upgraded forward on open (``MIGRATIONS``).
* ``schedules``: one row per schedule: its trigger as text (``every 30`` or ``cron */5 * * * *``
  with ``tz``, ``start_at``, ``end_at``), the callable as an import reference (``func``) or, only
  when it has none, pickled (``callable``), its arguments pickled, options as JSON, state, the next
  fire time not yet made into a run, counters, and a version bumped by every change.
* ``runs``: one row per fire time of a schedule, unique on (schedule, fire_time): ``due`` (made,
  nobody's), ``claimed`` (a host will start it at its time), ``running``, then ``done``,
  ``failed``, ``missed``, ``skipped`` or ``interrupted``. Kept as the schedule's history, the last
  ``history`` finished ones.
* ``jobs``: one-off timed jobs (``submit_at``/``submit_after``), the same states (``due`` first).
* ``hosts``: the pools using the store, each with a lease it renews; an expired lease releases the
  host's claims (a run it had started is recorded interrupted, never started again unless its job
  asked for ``redeliver``).

Times are epoch seconds (floats) from the hosts' clocks, which are assumed NTP-synchronized; a
lease is taken over only ``SKEW`` seconds after it expired.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

SCHEMA_VERSION = 2
SKEW = 2.0  # seconds: the clock difference between hosts a lease takeover tolerates
FINAL = ("done", "failed", "missed", "skipped", "interrupted", "cancelled")


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says which and why."""


# Each migration takes the schema from version i to i + 1; {blob}, {real}, {serial} are the
# dialect's types. A store of any earlier version is upgraded forward on open, in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        "CREATE TABLE procworks_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE procworks_schedules ("
        " name TEXT PRIMARY KEY, trig TEXT NOT NULL, tz TEXT, start_at {real}, end_at {real},"
        " func TEXT, callable {blob}, args {blob} NOT NULL, options TEXT NOT NULL,"
        " state TEXT NOT NULL, next_time {real},"
        " runs INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,"
        " missed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,"
        " interrupted INTEGER NOT NULL DEFAULT 0, created {real} NOT NULL, updated {real} NOT NULL)",
        "CREATE TABLE procworks_runs ("
        " id {serial}, schedule TEXT NOT NULL, fire_time {real} NOT NULL, state TEXT NOT NULL,"
        " host TEXT, started {real}, finished {real}, duration {real}, error TEXT,"
        " UNIQUE (schedule, fire_time))",
        "CREATE TABLE procworks_jobs ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL, due {real} NOT NULL, func TEXT, callable {blob},"
        " args {blob} NOT NULL, options TEXT NOT NULL, state TEXT NOT NULL, host TEXT,"
        " started {real}, finished {real}, duration {real}, error TEXT)",
        "CREATE TABLE procworks_hosts ("
        " id TEXT PRIMARY KEY, label TEXT NOT NULL, lease_until {real} NOT NULL)",
    ),
    (  # 1 -> 2: change propagation, redelivery attempts, the submitting host, indexes for claims
        "ALTER TABLE procworks_schedules ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE procworks_runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE procworks_jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE procworks_jobs ADD COLUMN origin TEXT",
        "CREATE INDEX procworks_runs_claim ON procworks_runs (state, fire_time)",
        "CREATE INDEX procworks_runs_host ON procworks_runs (host)",
        "CREATE INDEX procworks_jobs_claim ON procworks_jobs (state, due)",
        "CREATE INDEX procworks_jobs_host ON procworks_jobs (host)",
        "CREATE INDEX procworks_jobs_origin ON procworks_jobs (origin)",
    ),
)


class Cursor(Protocol):
    """What the store's statements use of a cursor (``?`` placeholders on both dialects)."""

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> None: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    @property
    def lock_row(self) -> str:
        """`` FOR UPDATE`` on PostgreSQL (after a SELECT of rows about to change), else nothing."""


@dataclass(frozen=True)
class Dialect:
    name: str
    blob: str
    real: str
    serial: str
    lock_rows: str  # appended to a claim's inner SELECT

    def sql(self, text: str) -> str:
        return text if self.name == "sqlite" else text.replace("?", "%s")


SQLITE = Dialect("sqlite", "BLOB", "REAL", "INTEGER PRIMARY KEY AUTOINCREMENT", "")
POSTGRES = Dialect(
    "postgresql", "BYTEA", "DOUBLE PRECISION", "BIGSERIAL PRIMARY KEY", " FOR UPDATE SKIP LOCKED"
)


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def check_url(url: object) -> str:
    """``url`` if it names a store this module can open; ValueError saying the accepted forms."""
    forms = "'sqlite:///path/to/jobs.db' (one host) or 'postgresql://user@host/db' (several hosts)"
    if not isinstance(url, str) or not url:
        raise ValueError(f"store={url!r} must be a URL: {forms}")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ValueError(
                f"store={url!r}: a SQLite store is 'sqlite:///relative.db' or 'sqlite:////abs.db'"
            )
    elif scheme not in ("postgresql", "postgres"):
        raise ValueError(f"store={describe_url(url)!r} has an unknown scheme {scheme!r}; use {forms}")
    return url


class Connection:
    """One connection to the store, with its dialect; used by one thread (the store's)."""

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = check_url(url)
        self.shown = describe_url(url)
        self.raw: Any
        if url.lower().startswith("sqlite"):
            self.dialect = SQLITE
            path = url[len("sqlite:///") :]
            try:
                # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
                self.raw = sqlite3.connect(
                    path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
                _wal(self.raw, busy_timeout)
                self.raw.execute("PRAGMA synchronous=NORMAL")
                self.raw.execute("PRAGMA foreign_keys=OFF")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite store {path!r}: {exc}") from exc
        else:
            self.dialect = POSTGRES
            try:
                import psycopg
            except ImportError:
                raise StoreError(
                    "a PostgreSQL store needs psycopg 3: pip install 'procworks[postgres]'"
                ) from None
            try:
                self.raw = psycopg.connect(url, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to the PostgreSQL store {self.shown}: {exc}") from exc

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions a lost connection or a failed statement raise."""
        if self.dialect is SQLITE:
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    @contextlib.contextmanager
    def tx(self) -> Iterator[Cursor]:
        """One transaction: SQLite's write lock from its start (BEGIN IMMEDIATE), or PostgreSQL's."""
        if self.dialect is SQLITE:
            cur = self.raw.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield _Sql(cur, self.dialect)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        else:
            with self.raw.transaction(), self.raw.cursor() as cur:
                yield _Sql(cur, self.dialect)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; the version found (0: a new store)."""
        d = self.dialect
        with self.tx() as cur:
            if d is POSTGRES:  # hosts opening a new store at once: one creates it
                cur.execute("SELECT pg_advisory_xact_lock(?)", (0x70726F63,))
            found = schema_version(cur, d)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.shown} has schema version {found}, newer than this "
                    f"procworks understands ({SCHEMA_VERSION}); upgrade procworks"
                )
            for version in range(found, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    cur.execute(statement.format(blob=d.blob, real=d.real, serial=d.serial))
            if found == 0:
                cur.execute(
                    "INSERT INTO procworks_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif found < SCHEMA_VERSION:
                cur.execute(
                    "UPDATE procworks_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
        return found


def _wal(con: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL (readers never wait for the writer). Processes opening a new store at once
    may find it locked, and this pragma does not wait on the busy timeout: retry, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def schema_version(cur: Cursor, d: Dialect) -> int:
    if d is SQLITE:
        cur.execute("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='procworks_meta'")
    else:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'procworks_meta'")
    if not cur.fetchone()[0]:
        return 0
    cur.execute("SELECT value FROM procworks_meta WHERE key = 'schema_version'")
    row = cur.fetchone()
    return int(row[0]) if row else 0


class _Sql:
    """A cursor that takes ``?`` placeholders on both dialects."""

    __slots__ = ("_cur", "_d")

    def __init__(self, cur: Any, d: Dialect) -> None:
        self._cur, self._d = cur, d

    def execute(self, sql: Any, params: Any = ()) -> Any:
        return self._cur.execute(self._d.sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(self._d.sql(sql), rows)

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    @property
    def lock_row(self) -> str:
        return " FOR UPDATE" if self._d is POSTGRES else ""


def now() -> float:
    return time.time()
