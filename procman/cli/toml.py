"""Reading a TOML file safely: a syntax error, a value nested too deep or an integer beyond 64 bits
is a ConfigError naming the line or the key, never a RecursionError or a silent huge number."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from .tables import TOP, ConfigError

MAX_NESTING = 64
"""Levels of tables, arrays and inline tables a file may nest: deeper values would exhaust the
stack of the TOML reader or of pickle, as a RecursionError instead of an error naming the key."""

_NESTED = f"nested more than {MAX_NESTING} levels deep; flatten the value"
_INT64 = "TOML integers are 64-bit, from -9223372036854775808 to 9223372036854775807"


def parse_toml(path: Path, text: str) -> dict[str, Any]:
    """The TOML document ``text``, or a ConfigError naming ``path`` (and the line, when it can)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ValueError:  # int() of a literal of more than sys.get_int_max_str_digits() digits
        long = re.search(rf"[0-9][0-9_]{{{sys.get_int_max_str_digits()},}}", text)
        at = f"line {text.count(chr(10), 0, long.start()) + 1}: " if long is not None else ""
        raise ConfigError(f"{path}: {at}an integer of thousands of digits; {_INT64}") from None
    except RecursionError:
        # tomllib reads nested arrays and inline tables recursively: a few hundred levels exhaust
        # the stack. Say where, found by a scanner that counts brackets without recursing.
        where = _deep_line(text)
        at = f"line {where[0]}: [{where[1]}] {where[2]}: " if where is not None else ""
        raise ConfigError(f"{path}: {at}arrays or inline tables {_NESTED}") from None


def beyond_limits(data: object) -> tuple[list[str], str] | None:
    """(key path, problem) of the first value nested deeper than MAX_NESTING (tables included) or
    of an integer beyond 64 bits, which TOML does not have but tomllib reads; else None."""
    todo: list[tuple[object, list[str], int]] = [(data, [], 0)]
    while todo:  # depth-first without recursion: the value may be as deep as tomllib allows
        value, keys, depth = todo.pop()
        if depth > MAX_NESTING:
            return keys, _NESTED
        if isinstance(value, dict):
            todo.extend((v, [*keys, str(k)], depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, keys, depth + 1) for v in value)
        elif isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:
            return keys, f"found an integer of {len(str(abs(value)))} digits; {_INT64}"
    return None


def _deep_line(text: str) -> tuple[int, str, str] | None:
    """(line, table, key) where brackets of a value nest more than MAX_NESTING deep, else None.

    A scanner, not a parser: it skips strings and comments and counts ``[``/``{`` against
    ``]``/``}``; a ``[`` that opens a line outside any value is a table header.
    """
    depth, line, start, i, n = 0, 1, 0, 0, len(text)
    table, key = TOP, "?"
    while i < n:
        c = text[i]
        if c == "\n":
            line, start = line + 1, i + 1
        elif c == "#":
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        elif c in "\"'":
            if text.startswith(c * 3, i):
                end = text.find(c * 3, i + 3)
                end = n if end < 0 else end + 3
            else:
                end = i + 1
                while end < n and text[end] not in (c, "\n"):
                    end += 2 if c == '"' and text[end] == "\\" else 1
                end += 1
            newline = text.rfind("\n", i, min(end, n))
            if newline >= 0:  # a multi-line string
                line, start = line + text.count("\n", i, newline + 1), newline + 1
            i = end
            continue
        elif depth == 0 and c == "[" and not text[start:i].strip():
            end = text.find("\n", i)
            end = n if end < 0 else end
            table = text[i:end].split("#", 1)[0].strip().strip("[]").strip()
            i = end
            continue
        elif depth == 0 and c == "=":
            key = text[start:i].strip()
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line, table, key
        elif c in "]}":
            depth -= 1
        i += 1
    return None
