"""Job serialization, the parent's half: what a job sends to its worker.

The rules are procman._child.pickling's; the worker's half (loading a job, pickling its result,
the initializer) is in procman._child.worker_loop.

Importable functions and modules go by reference (stdlib pickle, about 2 us); what comes from
``__main__`` (the host's script, ``-c``, stdin, the REPL), lambdas and closures go by value. A
callable is serialized once and cached by identity, so a recurring job or a loop that submits the
same lambda pays the by-value pickler (~100 us) once, not per run; the worker caches the loaded
callable by its bytes for the same reason.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from typing import Any

from procman._child import pickling as _pickling
from procman._child.explain import describe, explain
from procman._child.worker_loop import CACHE_MAX, FN_LEN, InitCall

from ._errors import SerializationError

_blobs: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


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
        raise SerializationError(explain(fn, "the job's callable", exc)) from exc
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
        raise SerializationError(explain(culprit, f"the job's {label}", exc)) from exc
    return FN_LEN.pack(len(fn_blob)) + fn_blob + payload


def check_job(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Check that the pool could send ``fn(*args, **kwargs)`` to a worker, without a pool.

    The checks :meth:`Pool.submit` and :meth:`Pool.schedule` make, by the same code: that ``fn`` is
    callable and that it and its arguments pickle. For a tool that reads jobs from a file and wants
    every mistake reported before anything runs (the ``procman`` command does). Whether the
    arguments fit ``fn``'s signature is not checked: the pool does not check it either.

    Raises:
        TypeError: ``fn`` is not callable.
        SerializationError: ``fn`` or an argument cannot be pickled (the message names it).
    """
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    dumps_job(callable_blob(fn), args, kwargs)


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


# -- the initializer -----------------------------------------------------------------------------


def init_call(fn: Callable[..., Any], initargs: tuple[Any, ...], start_method: str) -> InitCall:
    """The pool's InitCall, checked now: what cannot reach a worker fails here, not at its start.

    Raises SerializationError naming the initializer or the argument that cannot be sent, and
    how to fix it; for a Queue, Lock or Event made in the 'fork' context (multiprocessing.Queue()
    on Linux before 3.14) and a pool that does not fork, the context to make it in.
    """
    try:
        fn_blob = _pickling.dumps(fn)
    except Exception as exc:
        raise SerializationError(explain(fn, "the initializer", exc)) from exc
    args = tuple(initargs)
    if start_method != "fork":  # forked workers inherit the arguments as they are
        # A trial start: the arguments pickle as they will at each worker's start.
        with _pickling.spawning(_pickling.TrialPopen()):
            try:
                _pickling.dumps_at_start(args)
            except Exception as exc:
                raise SerializationError(_initargs_error(args, start_method, exc)) from exc
    return InitCall(fn_blob, args)


def _initargs_error(args: tuple[Any, ...], start_method: str, exc: BaseException) -> str:
    """The message for initargs that cannot be sent (called within the trial start)."""
    index, culprit = next(((i, a) for i, a in enumerate(args) if not _sends_at_start(a)), (None, args))
    what = "the initargs" if index is None else f"initargs item {index}"
    if "fork context" in str(exc):  # SemLock.__getstate__: made with the 'fork' start method
        module = type(culprit).__module__
        if module.startswith("multiprocess"):
            package = module.split(".")[0]
        else:  # a container: its item's error names the package ("create multiprocess objects")
            package = "multiprocess" if "multiprocess objects" in str(exc) else "multiprocessing"
        kind = type(culprit).__name__
        context = f"{package}.get_context({start_method!r})"
        subject = f"{what} is {describe(culprit)}"
        if not module.startswith(package):  # a container: it holds one
            subject = f"{what} ({describe(culprit)}) holds a {package} object"
        if module.startswith(package) and hasattr(importlib.import_module(package), kind):
            made, make = f"{package}.{kind}()", f"{context}.{kind}()"
        else:
            made, make = f"{package}.Queue(), Lock()...", f"{context} (its .Queue(), .Lock()...)"
        return (
            f"{subject} made in the 'fork' context (the default of {made} on Linux before Python "
            f"3.14), and a pool whose workers start with {start_method!r} cannot receive it.\n"
            f"Fix: make it in the pool's context, {make}, or pass start_method='fork' to the pool.\n"
            f"Reason: {type(exc).__name__}: {exc}"
        )
    return explain(culprit, what, exc, pickle_with=_pickling.dumps_at_start)


def _sends_at_start(obj: Any) -> bool:
    try:
        _pickling.dumps_at_start(obj)
    except Exception:  # noqa: BLE001 - any failure means "not sendable"
        return False
    return True
