"""Job serialization: stdlib pickle first (about 2 us), dill only for what pickle refuses.

A callable that pickle refuses (a lambda, a closure, a function defined in ``__main__`` under
spawn) is serialized by dill once and cached by identity, so a recurring job or a loop that submits
the same lambda pays dill's ~100 us once, not per run. The worker caches the loaded callable by its
bytes for the same reason.
"""

from __future__ import annotations

import pickle
import struct
import weakref
from collections.abc import Callable
from typing import Any

from ._errors import SerializationError

PICKLE = b"p"
DILL = b"d"


class DillCallable:
    """A callable carried as dill bytes inside an otherwise plain pickle."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (DillCallable, (self.blob,))


_callables: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{name!s} ({type(obj).__module__}.{type(obj).__qualname__})"


def callable_ref(fn: Callable[..., Any]) -> Any:
    """What to put in the job tuple for ``fn``: itself when pickle takes it, else its dill bytes."""
    try:
        return _callables[fn]
    except (KeyError, TypeError):
        pass
    ref: Any
    try:
        pickle.dumps(fn, protocol=5)
        module = getattr(fn, "__module__", None)
        ref = fn if module != "__main__" else _dill_ref(fn)
    except Exception:  # noqa: BLE001 - pickle refuses lambdas and closures: dill takes them
        ref = _dill_ref(fn)
    try:
        _callables[fn] = ref
    except TypeError:  # not weak-referenceable (a builtin, a partial of one): fine, no cache
        pass
    return ref


def _dill_ref(fn: Callable[..., Any]) -> DillCallable:
    import dill

    try:
        return DillCallable(dill.dumps(fn, protocol=5, recurse=True))
    except Exception as exc:
        raise SerializationError(
            f"the job's callable {_describe(fn)} cannot be pickled, even by dill: {exc}"
        ) from exc


def callable_blob(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled (by reference, or as dill bytes), once per callable: most submits reuse it."""
    try:
        return _blobs[fn]
    except (KeyError, TypeError):
        pass
    blob = pickle.dumps(callable_ref(fn), protocol=5)
    try:
        _blobs[fn] = blob
    except TypeError:  # not weak-referenceable: fine, no cache
        pass
    return blob


_blobs: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_FN_LEN = struct.Struct("<I")
FN_CACHE_MAX = 256  # loaded callables a worker keeps, by their bytes


def dumps_job(fn_blob: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A job for the wire: the callable's bytes (see callable_blob), then its pickled arguments.

    Raises SerializationError naming the argument that cannot be pickled.
    """
    call = (args, kwargs)
    try:
        payload = PICKLE + pickle.dumps(call, protocol=5)
    except Exception:  # noqa: BLE001 - fall back to dill, then pinpoint the culprit
        import dill

        try:
            payload = DILL + dill.dumps(call, protocol=5, recurse=True)
        except Exception as exc:
            culprit = _culprit(args, kwargs)
            raise SerializationError(
                f"job cannot be pickled: {culprit}: {exc}. Pass data that pickles (plain values, "
                "module-level functions and classes), or create the resource inside the job"
            ) from exc
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
        ref = pickle.loads(fn_blob)
        if isinstance(ref, DillCallable):
            import dill

            ref = dill.loads(ref.blob)
        fn = ref
        if cache is not None:
            if len(cache) >= FN_CACHE_MAX:
                cache.clear()
            cache[fn_blob] = fn
    args, kwargs = loads(view[4 + n :])
    return fn, args, kwargs


def _culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    import dill

    for i, arg in enumerate(args):
        try:
            dill.dumps(arg, protocol=5, recurse=True)
        except Exception:  # noqa: BLE001
            return f"positional argument {i} is {_describe(arg)}"
    for key, value in kwargs.items():
        try:
            dill.dumps(value, protocol=5, recurse=True)
        except Exception:  # noqa: BLE001
            return f"keyword argument {key!r} is {_describe(value)}"
    return "an argument"


def loads(blob: bytes | memoryview) -> Any:
    if bytes(blob[:1]) == DILL:
        import dill

        return dill.loads(bytes(blob[1:]))
    return pickle.loads(blob[1:])


def dumps_result(value: Any) -> bytes:
    """A result for the wire; dill when pickle refuses; SerializationError if neither can."""
    try:
        return PICKLE + pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001
        pass
    import dill

    try:
        blob: bytes = dill.dumps(value, protocol=5, recurse=True)
        return DILL + blob
    except Exception as exc:
        raise SerializationError(
            f"the job's result {_describe(value)} cannot be pickled to send it back: {exc}"
        ) from exc
