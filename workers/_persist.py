"""What a stored schedule or timed job is made of, to and from its row (see workers._store).

The callable goes as an import reference (``package.module:function``) whenever it has one: the
row stays readable, and a new release of the code runs the new function. Only what has none (a
lambda, a closure, a function of the host's ``__main__``) is stored pickled. Arguments are always
pickled. Loading a row checks everything a run needs (the trigger, the options, the callable, the
arguments), so a row that cannot run is reported once, with its name and the reason, and kept.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import orjson

from procman._child import pickling as _pickling
from procman._child.worker_loop import FN_LEN

from ._cron import Cron
from ._errors import SerializationError
from ._serialize import callable_blob
from ._triggers import Every, Trigger

OPTION_KEYS = (
    "max_instances",
    "overlap",
    "misfire_grace",
    "coalesce",
    "timeout",
    "retries",
    "retry_backoff",
    "redeliver",
)


class Unloadable(Exception):
    """A stored row that cannot run here: the message says why."""


def func_ref(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` when importing it gives ``fn`` back, else None (pickle it instead)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        return None
    if "<" in qualname:  # <lambda>, <locals>
        return None
    try:
        found = resolve(f"{module}:{qualname}")
    except Unloadable:
        return None
    return f"{module}:{qualname}" if found is fn else None


def resolve(ref: str) -> Callable[..., Any]:
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise Unloadable(f"{ref!r} is not an import reference (module:function)")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the import raised is the reason
        raise Unloadable(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise Unloadable(f"module {module_name!r} has no {qualname!r}") from None
    if not callable(obj):
        raise Unloadable(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def encode_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str | None, bytes | None, bytes]:
    """(func reference or None, pickled callable or None, pickled arguments) for a row.

    Raises SerializationError as Pool.submit does (the message names what cannot be pickled).
    """
    ref = func_ref(fn)
    pickled = None if ref is not None else callable_blob(fn)
    if ref is not None:
        callable_blob(fn)  # the same check as submit: it must reach a worker
    try:
        arg_bytes = _pickling.dumps((args, kwargs))
    except Exception as exc:
        from ._serialize import dumps_job

        dumps_job(b"", args, kwargs)  # raises the SerializationError naming the argument
        raise SerializationError(str(exc)) from exc
    return ref, pickled, arg_bytes


def decode_call(func: str | None, pickled: bytes | None, arg_bytes: bytes) -> tuple[str, bytes]:
    """(a name for the callable, the job's bytes for a worker); Unloadable saying why not."""
    if func is not None:
        fn = resolve(func)
        fn_blob = callable_blob(fn)
        shown = func
    elif pickled is not None:
        fn_blob = bytes(pickled)
        try:
            fn = _pickling.loads(fn_blob)
        except Exception as exc:  # noqa: BLE001 - a changed class, a missing module, corrupt bytes
            raise Unloadable(f"its pickled callable cannot be loaded: {type(exc).__name__}: {exc}") from None
        shown = getattr(fn, "__qualname__", repr(fn))
    else:
        raise Unloadable("it has neither an import reference nor a pickled callable")
    try:
        call = _pickling.loads(bytes(arg_bytes))
        args, kwargs = call
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise TypeError("not (args, kwargs)")
    except Exception as exc:  # noqa: BLE001
        raise Unloadable(f"its pickled arguments cannot be loaded: {type(exc).__name__}: {exc}") from None
    return shown, FN_LEN.pack(len(fn_blob)) + fn_blob + bytes(arg_bytes)


def trigger_row(trigger: Trigger) -> tuple[str, str | None, float | None, float | None]:
    """(text, time zone, start, end) of a trigger, e.g. ('every 30', None, ...) or ('cron 0 2 * * *', ...)."""
    if isinstance(trigger, Every):
        return f"every {trigger.interval!r}", None, trigger.start, trigger.end
    assert isinstance(trigger, Cron)
    tz = trigger.tz
    tz_name = None if tz is None else str(getattr(tz, "key", None) or tz)
    return f"cron {trigger.expr}", tz_name, trigger.start, trigger.end


def parse_trigger(text: str, tz: str | None, start: float | None, end: float | None) -> Trigger:
    """The trigger of a row; Unloadable when its text is not one this module writes."""
    kind, _, rest = str(text).partition(" ")
    try:
        if kind == "every":
            interval = float(rest)
            if not math.isfinite(interval):
                raise ValueError(rest)
            return Every(interval, start, end)
        if kind == "cron":
            return Cron(rest, tz, start, end)
    except Exception as exc:  # noqa: BLE001 - ScheduleError, ValueError
        raise Unloadable(f"its trigger {text!r} is invalid: {exc}") from None
    raise Unloadable(f"its trigger {text!r} is neither 'every SECONDS' nor 'cron EXPRESSION'")


def dump_options(opts: dict[str, Any]) -> str:
    return orjson.dumps({k: opts[k] for k in OPTION_KEYS if k in opts}).decode()


def load_options(text: str) -> dict[str, Any]:
    try:
        opts = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Unloadable(f"its options are not JSON: {exc}") from None
    if not isinstance(opts, dict):
        raise Unloadable(f"its options {text!r} are not a JSON object")
    out = {
        "max_instances": 1,
        "overlap": "skip",
        "misfire_grace": 300.0,
        "coalesce": True,
        "timeout": None,
        "retries": 0,
        "retry_backoff": 0.1,
        "redeliver": False,
    }
    for key, value in opts.items():
        if key not in out:
            raise Unloadable(f"its options have an unknown key {key!r}")
        out[key] = value
    ok = (
        isinstance(out["max_instances"], int)
        and out["max_instances"] >= 1
        and out["overlap"] in ("skip", "queue")
        and _seconds(out["misfire_grace"])
        and _seconds(out["timeout"])
        and isinstance(out["retries"], int)
        and out["retries"] >= 0
        and _seconds(out["retry_backoff"], none=False)
        and isinstance(out["coalesce"], bool)
        and isinstance(out["redeliver"], bool)
    )
    if not ok:
        raise Unloadable(f"its options {text!r} have a value out of range")
    return out


def _seconds(value: object, *, none: bool = True) -> bool:
    if value is None:
        return none
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
