"""Job serialization: what a job sends to its worker and what comes back (rules: procman._pickling).

Importable functions and modules go by reference (stdlib pickle, about 2 us); what comes from
``__main__`` (the host's script, ``-c``, stdin, the REPL), lambdas and closures go by value. A
callable is serialized once and cached by identity, so a recurring job or a loop that submits the
same lambda pays the by-value pickler (~100 us) once, not per run; the worker caches the loaded
callable by its bytes for the same reason.
"""

from __future__ import annotations

import importlib
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
        raise SerializationError(_pickling.explain(value, "the job's result", exc, to_host=True)) from exc


# -- the initializer -----------------------------------------------------------------------------


class InitCall:
    """The pool's initializer and its ``initargs``, as each worker gets them.

    The callable is pickled once, at Pool(). The arguments are pickled when this object is: while
    procman starts a forkserver or spawn worker (procman._process pickles the process object
    inside _pickling.spawning), as ProcessPoolExecutor hands over its initargs. So they may hold
    what multiprocessing shares only with a process it starts (a Queue, Lock or Event of
    multiprocessing or multiprocess, made in the context of the pool's start method): each worker
    gets their pipes and semaphores as file descriptors of its own start. A forked worker inherits
    this object, arguments and all, and nothing is pickled.
    """

    __slots__ = ("args", "args_blob", "fn_blob")

    def __init__(self, fn_blob: bytes, args: tuple[Any, ...], args_blob: bytes | None = None) -> None:
        self.fn_blob = fn_blob
        self.args = args
        self.args_blob = args_blob  # in a worker: the arguments, loaded by load()

    def __reduce__(self) -> tuple[Any, ...]:
        return (InitCall, (self.fn_blob, (), _pickling.dumps_at_start(self.args)))

    def load(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The initializer and its arguments (in the worker: so that errors are the initializer's)."""
        fn = _pickling.loads(self.fn_blob)
        args = self.args if self.args_blob is None else _pickling.loads(self.args_blob)
        return fn, tuple(args)


def init_call(fn: Callable[..., Any], initargs: tuple[Any, ...], start_method: str) -> InitCall:
    """The pool's InitCall, checked now: what cannot reach a worker fails here, not at its start.

    Raises SerializationError naming the initializer or the argument that cannot be sent, and
    how to fix it; for a Queue, Lock or Event made in the 'fork' context (multiprocessing.Queue()
    on Linux before 3.14) and a pool that does not fork, the context to make it in.
    """
    try:
        fn_blob = _pickling.dumps(fn)
    except Exception as exc:
        raise SerializationError(_pickling.explain(fn, "the initializer", exc)) from exc
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
        subject = f"{what} is {_pickling.describe(culprit)}"
        if not module.startswith(package):  # a container: it holds one
            subject = f"{what} ({_pickling.describe(culprit)}) holds a {package} object"
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
    return _pickling.explain(culprit, what, exc, pickle_with=_pickling.dumps_at_start)


def _sends_at_start(obj: Any) -> bool:
    try:
        _pickling.dumps_at_start(obj)
    except Exception:  # noqa: BLE001 - any failure means "not sendable"
        return False
    return True
