"""A config file's tables, read key by key: each reader checks a value's type and range and raises
a ConfigError that names the file, the table, the key, what was found and what was expected."""

from __future__ import annotations

import difflib
import importlib
import math
from pathlib import Path
from typing import Any

from procman import ProcmanError

MAX_SECONDS = 100 * 365 * 24 * 3600.0  # 100 years: procman's and workers' longest duration (timers overflow)
SECONDS = '(e.g. 10, 2.5, "30s", "5m", "1h30m", "1d" or "500ms")'


class ConfigError(ProcmanError, ValueError):
    """The config file is invalid; nothing was started."""


TOP = "top level"


class Table:
    """One TOML table being read: remembers what was read, to reject unknown keys."""

    def __init__(self, file: Path, name: str, data: object) -> None:
        self.file = file
        self.name = name
        if not isinstance(data, dict):
            raise self.error_at(None, data, "a table")
        self.data: dict[str, Any] = data
        self.known: set[str] = set()

    def error_at(self, key: str | None, found: object, expected: str) -> ConfigError:
        where = f"[{self.name}]" + (f" {key}" if key else "")
        return ConfigError(f"{self.file}: {where}: found {show(found)}, expected {expected}")

    def fail(self, key: str | None, message: str) -> ConfigError:
        where = f"[{self.name}]" + (f" {key}" if key else "")
        return ConfigError(f"{self.file}: {where}: {message}")

    def has(self, key: str) -> bool:
        self.known.add(key)
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        self.known.add(key)
        return self.data.get(key, default)

    def seconds(
        self, key: str, default: float | None, *, positive: bool = False, minimum: float = 0.0
    ) -> float | None:
        """A duration of at most 100 years (longer ones overflow the event loop's timers)."""
        if not self.has(key):
            return default
        value = self.data[key]
        seconds = duration(value)
        if seconds is None or seconds < 0 or (positive and seconds == 0):
            what = "a number of seconds" + (" > 0" if positive else " >= 0")
            raise self.error_at(key, value, f"{what} {SECONDS}")
        if seconds < minimum:
            raise self.error_at(key, value, f"at least {minimum:g} seconds ({minimum * 1000:g}ms)")
        if seconds > MAX_SECONDS:
            raise self.error_at(key, value, f"at most 100 years ({MAX_SECONDS:.0f} seconds)")
        return seconds

    def integer(
        self, key: str, default: int | None, *, minimum: int, maximum: int | None = None
    ) -> int | None:
        if not self.has(key):
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error_at(key, value, f"a whole number >= {minimum}")
        if maximum is not None and value > maximum:
            raise self.error_at(key, value, f"a whole number from {minimum} to {maximum}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.optional_number(key, minimum=minimum)
        return default if value is None else value

    def optional_number(
        self, key: str, *, minimum: float = 0.0, above: bool = False, maximum: float | None = None
    ) -> float | None:
        if not self.has(key):
            return None
        value = self.data[key]
        expected = f"a number {'>' if above else '>='} {minimum:g}"
        if maximum is not None:
            expected += f" and <= {maximum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value):
            raise self.error_at(key, value, expected)
        if value < minimum or (above and value == minimum) or (maximum is not None and value > maximum):
            raise self.error_at(key, value, expected)
        return float(value)

    def string(self, key: str, default: str | None = None) -> str | None:
        if not self.has(key):
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value:
            raise self.error_at(key, value, "a non-empty string")
        if "\0" in value:  # no name, path or expression holds one; the OS refuses them in paths
            raise self.error_at(key, value, "a string without NUL characters")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        assert value is not None
        if value not in choices:
            raise self.error_at(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    def table(self, key: str) -> Table | None:
        if not self.has(key):
            return None
        return Table(self.file, f"{self.name}.{key}" if self.name != TOP else key, self.data[key])

    def tables(self, key: str) -> list[tuple[str, Table]]:
        """The sub-tables of ``[key]`` (``[daemons.web]``, ...), each with its name."""
        section = self.table(key)
        if section is None:
            return []
        section.known.update(section.data)
        return [
            (name, Table(self.file, f"{section.name}.{name}", value)) for name, value in section.data.items()
        ]

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.known:
                hint = difflib.get_close_matches(key, sorted(self.known), n=1)
                expected = (
                    f"did you mean {hint[0]!r}?" if hint else "known keys: " + ", ".join(sorted(self.known))
                )
                raise self.fail(key, f"unknown key; {expected}")


def duration(value: object) -> float | None:
    """Seconds from a number or a string such as "90s", "1h30m", "1d", "250ms"; None if neither.

    The same reader as ``Pool.schedule(every=...)``: :func:`workers.parse_duration`.
    """
    from workers import parse_duration

    return parse_duration(value)


def finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (TOML integers have no bound in tomllib)
        return False


def show(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"the list {value!r}" if len(repr(value)) <= 60 else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def import_ref(t: Table, key: str, ref: str) -> Any:
    """``package.module:attribute`` -> the object (the config file's directory is on sys.path)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise t.error_at(key, ref, "'package.module:attribute', e.g. 'myapp.jobs:cleanup'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise t.fail(key, f"cannot import module {module_name!r} for {ref!r}: {exc}") from None
    except Exception as exc:
        raise t.fail(
            key, f"importing {module_name!r} for {ref!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise t.fail(key, f"module {module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    return obj
