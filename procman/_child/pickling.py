"""What crosses into a child: objects by reference wherever they can be imported, by value otherwise.

Children never re-execute the host's main script (see procman._proc.start), so anything defined in
``__main__`` (a script, ``python -c``, ``python -``, the REPL, a notebook) must travel by value, and
everything importable must travel by reference so that a child sees its own module state, never a
copy of the host's. The rules:

* stdlib pickle first (about 2 us). Its output is used as is unless it names ``__main__``, which a
  child does not have; then the pickler below takes over.
* The pickler below is dill's with two changes. Modules that are imported under their name go by
  reference, whatever their install mode (dill copies every module outside site-packages by value:
  an editable install, the app's local modules, and restores that copy over the child's module).
  A function defined in ``__main__`` goes by value with only the globals its code names, shared
  between the functions of one pickle; a global that an importable module also holds (``from app
  import CACHE``) goes by reference to that module. A lambda or closure defined in an importable
  module goes by value with that module's own namespace as its globals (by reference).
* A class from ``__main__`` goes by value and is adopted into the child's ``__main__``, so what the
  child sends back (results, exceptions) refers to it by name and arrives as the host's own class.

* What multiprocessing shares only with a process it starts (a Queue, Lock or Event, a Connection:
  their ``__getstate__`` refuses any other time) is pickled by :func:`dumps_at_start` while a child
  starts (:func:`spawning`), with the reducers multiprocessing and multiprocess register for their
  own pickler: pipes and semaphores go to that child as file descriptors of its start. Elsewhere
  those reducers stay out, because a blob made once (a daemon, a job) may be loaded many times,
  and the fds they would lend for it (multiprocessing's resource sharer) can be fetched only once.

When something cannot be sent, ``explain.explain`` finds the object, global or attribute that
failed and says how to fix it, instead of dill's long traceback (kept as ``__cause__``).
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import dis
import functools
import importlib
import io
import pickle
import sys
import types
from collections.abc import Iterator
from typing import Any

PICKLE = b"p"
DILL = b"d"
MAIN_NAMES = ("__main__", "__mp_main__")
_MAIN_MARK = b"__main__"
IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range)


def dumps(obj: Any) -> bytes:
    """``obj`` tagged for :func:`loads`: stdlib pickle when it suffices, else the pickler below.

    Raises whatever pickling raised when neither can send ``obj`` (see :func:`explain`).
    """
    try:
        blob = pickle.dumps(obj, protocol=5)
    except Exception:  # noqa: BLE001 - pickle refuses lambdas, closures, local classes: by value
        return DILL + dumps_by_value(obj)
    if _MAIN_MARK in blob:  # refers to the host's __main__, which a child does not have
        return DILL + dumps_by_value(obj)
    return PICKLE + blob


def dumps_at_start(obj: Any) -> bytes:
    """``obj`` tagged for :func:`loads`, pickled for the one child now starting (see spawning()).

    As :func:`dumps`, with the reducers of multiprocessing's and multiprocess's own pickler
    added, so that a Queue's pipes, a Connection or a socket go to that child as file
    descriptors. Raises what pickling raised, e.g. RuntimeError for a multiprocessing object made
    in the 'fork' context, or outside spawning().
    """
    table = _start_dispatch_table()
    popen = _spawning_popen()
    fds = getattr(popen, "_fds", None)
    mark = len(fds) if isinstance(fds, list) else 0
    buf = io.BytesIO()
    try:
        pickler = pickle.Pickler(buf, protocol=5)
        pickler.dispatch_table = table
        pickler.dump(obj)
        blob = buf.getvalue()
        if _MAIN_MARK not in blob:
            return PICKLE + blob
    except Exception:  # noqa: BLE001 - as in dumps: by value
        pass
    if isinstance(fds, list):  # what the first try handed to the child, the second hands again
        del fds[mark:]
    return DILL + dumps_by_value(obj, table)


def _start_dispatch_table() -> dict[Any, Any]:
    """copyreg's reducers, then multiprocessing's, then multiprocess's (the latter win)."""
    global _table, _table_key
    sources: list[dict[Any, Any]] = [copyreg.dispatch_table]
    for name in ("multiprocessing.reduction", "multiprocess.reduction"):
        module = sys.modules.get(name)
        if module is not None:
            sources.append(module.ForkingPickler._extra_reducers)
    key = tuple((id(d), len(d)) for d in sources)  # modules register more as they are imported
    if key != _table_key:
        table: dict[Any, Any] = {}
        for d in sources:
            table.update(d)
        _table, _table_key = table, key
    return _table


_table: dict[Any, Any] = {}
_table_key: tuple[tuple[int, int], ...] = ()


def _spawning_popen() -> Any:
    from multiprocess import context

    return context.get_spawning_popen()


@contextlib.contextmanager
def spawning(popen: Any) -> Iterator[None]:
    """While a child starts: objects multiprocessing shares only then may be pickled for it.

    Sets ``popen`` as the spawning popen of multiprocess and, when it is imported, of the stdlib
    multiprocessing: their Queue, Lock, Event... then accept to be pickled (``assert_spawning``),
    and their reducers hand file descriptors to this child through ``popen.duplicate_for_child``
    and ``popen.DupFd``. Thread-local, like multiprocessing's own.
    """
    from multiprocess import context as mpx_context

    contexts = [mpx_context]
    std_context = sys.modules.get("multiprocessing.context")  # not imported: none of its objects
    if std_context is not None:
        contexts.append(std_context)
    before = [c.get_spawning_popen() for c in contexts]
    for c in contexts:
        c.set_spawning_popen(popen)
    try:
        yield
    finally:
        for c, previous in zip(contexts, before, strict=True):
            c.set_spawning_popen(previous)


class _TrialFd:
    """What a trial start (TrialPopen) hands out for a file descriptor: its number, for nobody."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_TrialFd, (self.fd,))


class TrialPopen:
    """A spawning popen for a trial pickle (see spawning()): takes fds, passes none, starts nothing.

    To check early, where the caller can be told, that something will pickle when a child starts.
    """

    DupFd = _TrialFd

    def __init__(self) -> None:
        self._fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return fd


def loads(blob: bytes | memoryview) -> Any:
    """The object of a :func:`dumps` blob."""
    if bytes(blob[:1]) == DILL:
        import dill

        return dill.loads(bytes(blob[1:]))
    return pickle.loads(blob[1:])


def dumps_by_value(obj: Any, dispatch_table: dict[Any, Any] | None = None) -> bytes:
    """``obj`` pickled by the rules in the module docstring (dill underneath).

    ``dispatch_table``: reducers by type, for what dill has no rule for (default: copyreg's).
    """
    buf = io.BytesIO()
    pickler = _pickler_class()(buf, protocol=5)
    if dispatch_table is not None:
        pickler.dispatch_table = dispatch_table
    pickler.dump(obj)
    return buf.getvalue()


def dumps_to_host(obj: Any) -> bytes:
    """``obj`` from a child back to its host, tagged for :func:`loads`.

    A class from ``__main__`` (the host's script, sent here by value) is written as a reference to
    the host's ``__main__``, so that a result or an exception arrives as the host's own class:
    ``isinstance`` and ``except`` work as in the script. Raises when nothing can send ``obj``.
    """
    try:
        return PICKLE + pickle.dumps(obj, protocol=5)
    except Exception:  # noqa: BLE001 - try by name into the host's __main__, then by value
        pass
    buf = io.BytesIO()
    try:
        _ToHostPickler(buf, protocol=5).dump(obj)
        return PICKLE + buf.getvalue()
    except Exception:  # noqa: BLE001
        return DILL + dumps_by_value(obj)


class _ToHostPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and obj.__module__ in MAIN_NAMES and obj.__qualname__.isidentifier():
            return (_module_attr, ("__main__", obj.__qualname__))
        return NotImplemented


# -- the pickler ---------------------------------------------------------------------------------


@functools.cache
def _pickler_class() -> type[Any]:
    """dill's Pickler with our dispatch for modules, functions and types (built on first use)."""
    import dill
    from dill import _dill

    base_dispatch = dill.Pickler.dispatch
    dill_save_type = _dill.save_type
    dill_save_module = _dill.save_module

    class Dispatch(_dill.MetaCatchingDict):  # type: ignore[misc]
        def __missing__(self, key: type) -> Any:
            if issubclass(key, type):  # metaclasses (ABCMeta, EnumMeta, ...) as classes
                return save_type
            raise KeyError(key)

    def save_module(pickler: Any, mod: types.ModuleType) -> None:
        name = mod.__name__
        if name not in MAIN_NAMES and sys.modules.get(name) is mod:
            pickler.save_reduce(importlib.import_module, (name,), obj=mod)
        else:
            dill_save_module(pickler, mod)

    def save_type(pickler: Any, cls: type) -> None:
        dill_save_type(pickler, cls)
        if cls.__module__ in MAIN_NAMES and cls.__qualname__.isidentifier():
            # Adopt it into the child's __main__ (an object on the stack, popped at once).
            pickler.save_reduce(_adopt_main, (cls,))
            pickler.write(pickle.POP)

    class Pickler(dill.Pickler):  # type: ignore[misc]
        dispatch = Dispatch(base_dispatch)

        def __init__(self, file: Any, protocol: int) -> None:
            super().__init__(file, protocol=protocol, recurse=False, byref=False)
            self.namespaces: dict[int, _Namespace] = {}

    Pickler.dispatch[types.ModuleType] = save_module
    Pickler.dispatch[types.FunctionType] = _save_function
    Pickler.dispatch[type] = save_type
    return Pickler


def home_module(fn: types.FunctionType) -> types.ModuleType | None:
    """The imported module whose namespace ``fn`` runs in, or None (``__main__``, exec'd code).

    Such a function keeps that module's live namespace in a child; any other goes by value with
    the globals its code names.
    """
    module_name = fn.__module__
    module = sys.modules.get(module_name) if isinstance(module_name, str) else None
    if module is None or module_name in MAIN_NAMES or getattr(module, "__dict__", None) is not fn.__globals__:
        return None
    return module


def _save_function(pickler: Any, fn: types.FunctionType) -> None:
    module_name = fn.__module__
    module = home_module(fn)
    if module is not None and _located(module, fn):
        pickler.save_global(fn)
        return
    values: dict[str, Any] | None
    if module is not None:
        namespace: Any = fn.__globals__  # dill writes an imported module's __dict__ by reference
        values = None
    else:
        holder = pickler.namespaces.get(id(fn.__globals__))
        if holder is None:
            holder = pickler.namespaces[id(fn.__globals__)] = _Namespace(module_name, fn.__globals__)
        namespace = holder
        values = {}
        for name in global_names(fn.__code__):
            if name in fn.__globals__:
                value = fn.__globals__[name]
                values[name] = _by_reference(name, value) or value
    cells = tuple(cell_value(c) for c in fn.__closure__ or ())
    state = (
        values,
        fn.__defaults__,
        fn.__kwdefaults__,
        cells,
        fn.__qualname__,
        module_name,
        fn.__doc__,
        fn.__annotations__ or None,
        fn.__dict__ or None,
    )
    pickler.save_reduce(
        _new_function,
        (fn.__code__, namespace, fn.__name__, len(cells)),
        state=state,
        obj=fn,
        state_setter=_fill_function,
    )


def _located(module: Any, fn: types.FunctionType) -> bool:
    obj: Any = module
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is fn


@functools.lru_cache(maxsize=4096)
def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` (and the code nested in it) reads or writes."""
    names: dict[str, None] = {}
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"):
            names[str(ins.argval)] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(global_names(const)))
    return tuple(names)


def _by_reference(name: str, value: Any) -> _ModuleAttr | None:
    """An importable module's attribute for ``value`` if one holds it under ``name``, else None.

    ``from app import CACHE`` in a script: the child uses app's CACHE, not a copy of the host's.
    Functions, classes and modules need no search (their own reducers refer to them by name).
    """
    if isinstance(value, (*IMMUTABLE, types.FunctionType, type, types.ModuleType)):
        return None
    for mod_name, mod in list(sys.modules.items()):
        if mod_name in MAIN_NAMES or mod is None:
            continue
        d = getattr(mod, "__dict__", None)
        if isinstance(d, dict) and d.get(name) is value:
            return _ModuleAttr(mod_name, name)
    return None


class _ModuleAttr:
    """Pickles as ``getattr(import_module(module), name)``."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_module_attr, (self.module, self.name))


def _module_attr(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


class _Namespace:
    """Pickles as a fresh globals dict, one per host namespace within one pickle (memoized)."""

    __slots__ = ("name", "source")

    def __init__(self, name: str | None, source: dict[str, Any]) -> None:
        self.name = name
        self.source = source  # held so its id stays unique while the pickler runs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_new_namespace, (self.name,))


def _new_namespace(name: str | None) -> dict[str, Any]:
    return {"__name__": name, "__builtins__": builtins}


class _EmptyCell:
    def __reduce__(self) -> str:
        return "EMPTY_CELL"


EMPTY_CELL = _EmptyCell()


def cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not yet assigned
        return EMPTY_CELL


def _new_function(
    code: types.CodeType, namespace: dict[str, Any], name: str, ncells: int
) -> types.FunctionType:
    closure = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    return types.FunctionType(code, namespace, name, None, closure)


def _fill_function(fn: types.FunctionType, state: tuple[Any, ...]) -> None:
    values, defaults, kwdefaults, cells, qualname, module, doc, annotations, fdict = state
    if values:
        fn.__globals__.update(values)
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    for cell, value in zip(fn.__closure__ or (), cells, strict=True):
        if value is not EMPTY_CELL:
            cell.cell_contents = value
    fn.__qualname__ = qualname
    fn.__module__ = module
    fn.__doc__ = doc
    if annotations:
        fn.__annotations__ = annotations
    if fdict:
        fn.__dict__.update(fdict)


def _adopt_main(cls: type) -> None:
    """In a child, give ``__main__`` the class sent by value, unless it has one of that name."""
    main = sys.modules.get("__main__")
    if main is not None and not hasattr(main, cls.__qualname__):
        setattr(main, cls.__qualname__, cls)
