"""Job serialization: what a job sends to its worker and what comes back (rules: procman._pickling).

Importable functions and modules go by reference (stdlib pickle, about 2 us); what comes from
``__main__`` (the host's script, ``-c``, stdin, the REPL), lambdas and closures go by value. A
callable is serialized once and cached by identity, so a recurring job or a loop that submits the
same lambda pays the by-value pickler (~100 us) once, not per run; the worker caches the loaded
callable by its bytes for the same reason.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Callable
from typing import Any

from procman import _pickling

from ._errors import SerializationError

_blobs: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_FN_LEN = struct.Struct("<I")
FN_CACHE_MAX = 256  # loaded callables a worker keeps, by their bytes
CACHE_MAX = 65536  # bytes: a callable pickled to more is pickled again at each use, not cached


def callable_blob(fn: Callable[..., Any]) -> bytes:
    """``fn`` serialized once per callable: most submits reuse it.

    Raises SerializationError naming what in ``fn`` cannot be sent, and how to fix it.
    """
    try:
        return _blobs[fn]
    except (KeyError, TypeError):
        pass
    try:
        blob = _pickling.dumps(fn)
    except Exception as exc:
        raise SerializationError(_pickling.explain(fn, "the job's callable", exc)) from exc
    if len(blob) <= CACHE_MAX:  # a big one (a partial over a large object) is not kept twice
        try:
            _blobs[fn] = blob
        except TypeError:  # not weak-referenceable (a builtin, a partial of one): fine, no cache
            pass
    return blob


def dumps_job(fn_blob: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A job for the wire: the callable's bytes (see callable_blob), then its pickled arguments.

    Raises SerializationError naming the argument that cannot be pickled.
    """
    call = (args, kwargs)
    try:
        payload = _pickling.dumps(call)
    except Exception as exc:
        label, culprit = _culprit(args, kwargs)
        raise SerializationError(_pickling.explain(culprit, f"the job's {label}", exc)) from exc
    return _FN_LEN.pack(len(fn_blob)) + fn_blob + payload


def load_job(
    blob: bytes | memoryview, cache: dict[bytes, Callable[..., Any]] | None = None
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The callable and arguments of a job from dumps_job; callables cached by their bytes."""
    view = memoryview(blob)
    (n,) = _FN_LEN.unpack_from(view, 0)
    fn_blob = bytes(view[4 : 4 + n])
    fn = cache.get(fn_blob) if cache is not None else None
    if fn is None:
        fn = _pickling.loads(fn_blob)
        if cache is not None and n <= CACHE_MAX:  # a big one would keep its objects alive
            if len(cache) >= FN_CACHE_MAX:
                cache.clear()
            cache[fn_blob] = fn
    args, kwargs = _pickling.loads(view[4 + n :])
    return fn, args, kwargs


def _culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    for i, arg in enumerate(args):
        try:
            _pickling.dumps(arg)
        except Exception:  # noqa: BLE001
            return f"positional argument {i}", arg
    for key, value in kwargs.items():
        try:
            _pickling.dumps(value)
        except Exception:  # noqa: BLE001
            return f"keyword argument {key!r}", value
    return "arguments", (args, kwargs)


loads = _pickling.loads


def dumps_result(value: Any) -> bytes:
    """A result for the wire (the host's ``__main__`` classes by name); SerializationError if it can't go."""
    try:
        return _pickling.dumps_to_host(value)
    except Exception as exc:
        raise SerializationError(_pickling.explain(value, "the job's result", exc)) from exc
