"""Why an object cannot be pickled, in a few lines: the failing part, and how to fix it."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from .pickling import EMPTY_CELL, IMMUTABLE, MAIN_NAMES, cell_value, dumps, global_names, home_module


def explain(
    obj: Any,
    what: str,
    exc: BaseException,
    *,
    pickle_with: Callable[[Any], bytes] | None = None,
    to_host: bool = False,
) -> str:
    """A few lines that say which part of ``obj`` cannot be sent, and how to fix it.

    Args:
        obj: what failed to pickle.
        what: how to call it in the message ("the job's callable", "daemon 'web'").
        exc: the error pickling raised.
        pickle_with: what pickled ``obj`` (default :func:`dumps`), to try its parts the same way.
        to_host: ``obj`` goes from a child back to the host (a job's result), not to a child.
    """
    path = _culprit_path(obj, depth=0, seen=set(), pickle_with=pickle_with or dumps)
    where = "back to the host process" if to_host else "to a child process"
    lines = [f"{what} is {describe(obj)}, which cannot be sent {where}."]
    if path:
        steps = " -> ".join(step for step, _ in path)
        lines.append(f"What fails: {steps}.")
        bad = path[-1][1]
    else:
        bad = obj
    lines.append(f"Reason: {type(exc).__name__}: {_short(str(exc))}")
    lines.append(_fix_for(bad, to_host))
    return "\n".join(lines)


def describe(obj: Any) -> str:
    """``name (module.Type)`` for a message."""
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__!r}"
    name = getattr(obj, "__qualname__", None)
    module = getattr(obj, "__module__", None)
    kind = type(obj)
    if isinstance(name, str) and isinstance(module, str):
        return f"{module}.{name} ({kind.__module__}.{kind.__qualname__})"
    return f"a {kind.__module__}.{kind.__qualname__} object"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fix_for(bad: Any, to_host: bool = False) -> str:
    kind = type(bad).__qualname__
    resource = f"a {kind} (an open resource such as a lock, socket, file, connection or compiled struct)"
    if to_host:  # a job's result, going back
        if isinstance(bad, types.GeneratorType):
            return "Fix: return the data (e.g. list(...)) instead of a generator."
        return (
            f"Fix: {resource} cannot be copied into another process: return the data it holds (or "
            "what the host needs to open it again) instead."
        )
    if isinstance(bad, types.GeneratorType):
        return "Fix: pass the data (a list) instead of a generator, or create the generator inside the job."
    return (
        f"Fix: {resource} cannot be copied into another process. Create it inside the job or daemon "
        "(in start()), or keep it at module level in an importable module and refer to it through "
        "that module (`import helpers; helpers.THING`): importable modules are sent by reference, "
        "never copied."
    )


def _sendable(obj: Any, pickle_with: Callable[[Any], bytes]) -> bool:
    try:
        pickle_with(obj)
    except Exception:  # noqa: BLE001 - any failure means "not sendable"
        return False
    return True


def _parts(obj: Any) -> list[tuple[str, Any]]:
    """The named parts pickling ``obj`` by value would send, for the culprit search."""
    parts: list[tuple[str, Any]] = []
    if isinstance(obj, types.FunctionType):
        if home_module(obj) is None:  # sent with copies of its globals: any of them may fail
            for name in global_names(obj.__code__):
                if name in obj.__globals__:
                    label = f"global {name!r} of {obj.__module__}.{obj.__qualname__}"
                    parts.append((label, obj.__globals__[name]))
        for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            value = cell_value(cell)
            if value is not EMPTY_CELL:
                parts.append((f"closure variable {var!r} of {obj.__qualname__}", value))
        for i, default in enumerate(obj.__defaults__ or ()):
            parts.append((f"default {i} of {obj.__qualname__}", default))
    elif isinstance(obj, type):
        for name, value in vars(obj).items():
            if not name.startswith("__"):
                parts.append((f"class attribute {obj.__qualname__}.{name}", value))
    elif isinstance(obj, functools.partial):
        parts.append(("the partial's function", obj.func))
        parts.extend((f"partial argument {i}", a) for i, a in enumerate(obj.args))
        parts.extend((f"partial keyword argument {k!r}", v) for k, v in obj.keywords.items())
    elif isinstance(obj, dict):
        parts.extend((f"key {k!r}", v) for k, v in list(obj.items())[:200])
    elif isinstance(obj, (list, tuple, set, frozenset)):
        parts.extend((f"item {i}", v) for i, v in enumerate(list(obj)[:200]))
    else:
        if type(obj).__module__ in MAIN_NAMES or not isinstance(obj, IMMUTABLE):
            parts.append((f"class {type(obj).__qualname__}", type(obj)))
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            parts.extend((f"attribute {type(obj).__qualname__}.{k}", v) for k, v in state.items())
    return parts


def _culprit_path(
    obj: Any, depth: int, seen: set[int], pickle_with: Callable[[Any], bytes]
) -> list[tuple[str, Any]]:
    if depth > 8 or id(obj) in seen:
        return []
    seen.add(id(obj))
    for label, part in _parts(obj):
        if id(part) in seen or _sendable(part, pickle_with):
            continue
        path = _culprit_path(part, depth + 1, seen, pickle_with)
        return [(f"{label} is {describe(part)}", part), *path]
    return []
