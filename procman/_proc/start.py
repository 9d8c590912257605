"""Start methods: how a child process is made, and every multiprocess-private detail of it.

forkserver (the default: safe when the host runs threads, ~13 ms a start), fork (~2 ms) and spawn
(~60 ms). Children never re-run the host's main script: their process object is pickled without the
main module (procman._child.pickling sends what they need from it by value), and the process class
they unpickle is multiprocess's own, so a child loads only the child side (procman._child).
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections.abc import Iterable
from multiprocessing import process as std_process  # free: dill imports stdlib multiprocessing
from typing import Any

import multiprocess
from multiprocess import context as mp_context
from multiprocess import process as mp_process
from multiprocess import util as _mp_util  # noqa: F401 - see _EXIT_HOOK_ORDER

try:  # imported here once: a forked child inherits it instead of importing it (~1-2 ms a start)
    import setproctitle  # noqa: F401
except ImportError:  # pragma: no cover - a dependency; children then keep their default title
    pass

from procman._child import pickling as _pickling
from procman._child import wire
from procman._child.boot import FdBox, child_main

START_METHODS = ("forkserver", "fork", "spawn")
# What the forkserver imports once for all its children: the child side, whole.
CHILD_MODULES = ["procman._child.boot", "procman._child.daemon_loop", "procman._child.worker_loop"]

# Python 3.12+ warns (DeprecationWarning) at every fork of a process that runs threads, and under
# start_method="fork" procman's own I/O thread always runs. That is one repeated, unexplained line
# per child; procman says it once, in its own words, when fork is chosen (warn_if_fork), and puts a
# filter for exactly that message from multiprocess's fork call in front before each fork (a filter
# set once would lose to any later simplefilter, pytest's included; catch_warnings would race with
# other threads when it restores the list).


def _quiet_fork_warning() -> None:
    warnings.filterwarnings(
        "ignore",
        message=r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks",
        category=DeprecationWarning,
        module=r"multiprocess\.popen_fork",
    )


_fork_warned = False
FORK_WARNING = (
    "start_method='fork' copies a process that runs threads (procman's I/O thread at least): a lock "
    "another thread holds at that instant stays locked in the child and can deadlock it, which is "
    "why Python 3.12+ deprecates forking such a process. Use start_method='forkserver' (the default) "
    "unless you need fork's speed or the host's memory in the children. (Shown once.)"
)


def warn_if_fork(method: str, stacklevel: int = 3) -> None:
    """Warn once per process that fork copies a threaded host (see FORK_WARNING)."""
    global _fork_warned
    if method == "fork" and not _fork_warned:
        _fork_warned = True
        warnings.warn(FORK_WARNING, RuntimeWarning, stacklevel=stacklevel)


# _EXIT_HOOK_ORDER: multiprocess.util registers, when first imported, an exit hook that removes the
# forkserver's socket directory. Importing it above, before procman and workers register their own
# exit hooks, makes ours run first (atexit runs in reverse order): pools and managers stop their
# children while the forkserver still works. Imported lazily instead, it could run first, and a
# worker still starting at exit would fail on a vanished socket.

_contexts: dict[str, Any] = {}
MAX_LINE = 65536  # bytes of a log line without newline before it is logged as it stands
CTRL_READ = 262144  # bytes per read of a control pipe


def get_context(method: str) -> Any:
    """The multiprocess context for ``method``; the forkserver preloads procman's child code."""
    ctx = _contexts.get(method)
    if ctx is None:
        ctx = multiprocess.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload([*CHILD_MODULES, "orjson", "uvloop", "dill", "setproctitle"])
        _contexts[method] = ctx
    return ctx


# Children never re-run the host's main script. multiprocessing's forkserver and spawn children
# re-import it (as __mp_main__) so that pickles naming __main__ resolve; that is why scripts need
# the main guard, why a script read from stdin or `-c` cannot start children, and why a script that
# makes a pool at top level loops. Here what a child needs from __main__ travels by value instead
# (procman._child.pickling), so the preparation data sent to a child leaves the main module out. fork
# children are copies of the host and re-run nothing anyway.


def _payload(popen: Any, process_obj: Any) -> io.BytesIO:
    """What a forkserver or spawn child reads first: preparation data (no main module), process.

    Pickled with ``popen`` as the spawning popen of multiprocess and of the stdlib multiprocessing
    (_pickling.spawning): a Queue, Lock or Event of either that the process object holds (a
    pool's initargs) is handed to this child, its pipes as file descriptors of this start.
    """
    from multiprocess import spawn
    from multiprocess.context import reduction

    prep = spawn.get_preparation_data(process_obj._name)
    prep.pop("init_main_from_path", None)
    prep.pop("init_main_from_name", None)
    buf = io.BytesIO()
    with _pickling.spawning(popen):
        reduction.dump(prep, buf)
        reduction.dump(process_obj, buf)
    return buf


def _forkserver_popen() -> type[Any]:
    from multiprocess import forkserver, popen_forkserver, util

    class Popen(popen_forkserver.Popen):  # type: ignore[misc]
        def _launch(self, process_obj: Any) -> None:
            buf = _payload(self, process_obj)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            # The child watches a duplicate of the data pipe's write end as its parent's sentinel.
            parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    return Popen


def _spawn_popen() -> type[Any]:
    from multiprocess import popen_spawn_posix, resource_tracker, spawn, util

    class Popen(popen_spawn_posix.Popen):  # type: ignore[misc]
        def _launch(self, process_obj: Any) -> None:
            tracker_fd = resource_tracker.getfd()
            self._fds.append(tracker_fd)
            buf = _payload(self, process_obj)
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            try:
                cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
                self._fds.extend([child_r, child_w])
                self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
                self.sentinel = parent_r
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(buf.getbuffer())
            finally:
                self.finalizer = util.Finalize(self, util.close_fds, [parent_r, parent_w])
                os.close(child_r)
                os.close(child_w)

    return Popen


_popens: dict[str, Any] = {}


def _popen(method: str, process_obj: Any) -> Any:
    """Launch ``process_obj`` with our Popen class for ``method`` (made once, on first use)."""
    cls = _popens.get(method)
    if cls is None:
        cls = _popens[method] = _forkserver_popen() if method == "forkserver" else _spawn_popen()
    return cls(process_obj)


class ForkServerProcess(mp_context.ForkServerProcess):  # type: ignore[misc]
    """A forkserver child that does not re-run the host's main script.

    A module-level class: the process object is pickled into the child, and a class made on the fly
    would be pickled by value, costing every start about 1.5 ms.
    """

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen("forkserver", process_obj)

    def __reduce__(self) -> tuple[Any, ...]:
        # The child gets multiprocess's own class: it starts nothing from this object, and this
        # class would load this module, the parent side, in every child.
        return (object.__new__, (mp_context.ForkServerProcess,), self.__dict__)


class SpawnProcess(mp_context.SpawnProcess):  # type: ignore[misc]
    """A spawn child that does not re-run the host's main script (see ForkServerProcess)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen("spawn", process_obj)

    def __reduce__(self) -> tuple[Any, ...]:
        return (object.__new__, (mp_context.SpawnProcess,), self.__dict__)


def process_class(method: str) -> Any:
    """The Process class for ``method`` whose children do not re-run the host's main script."""
    if method == "forkserver":
        return ForkServerProcess
    if method == "spawn":
        return SpawnProcess
    return get_context(method).Process


_guarded_in: int | None = None  # the pid that set up the guard (a forked host sets it up anew)


def _guard_forkserver() -> None:
    """Before the forkserver starts: have it ignore SIGTERM sent to our group (procman._child.fsguard)."""
    global _guarded_in
    if _guarded_in == os.getpid():
        return
    _guarded_in = os.getpid()
    from multiprocess import forkserver

    os.environ["_PROCMAN_FORKSERVER_PARENT"] = str(os.getpid())
    ctx = get_context("forkserver")  # first: it sets the preload list this extends
    modules = list(forkserver._forkserver._preload_modules)
    if "procman._child.fsguard" not in modules:
        ctx.set_forkserver_preload([*modules, "procman._child.fsguard"])


def check_preload(modules: Iterable[str]) -> list[str]:
    """The module names of a ``preload=`` argument, each one found, or a ValueError naming it."""
    if isinstance(modules, str) or not isinstance(modules, Iterable):
        raise ValueError(f"preload={modules!r} must be a list of module names, e.g. ['numpy', 'app.web']")
    names = list(modules)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"preload holds {name!r}; it must hold module names, e.g. 'app.web'")
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that is missing, or a relative name
            found = False
        if not found:
            raise ValueError(
                f"preload module {name!r} cannot be found from this interpreter (sys.path); "
                "check its spelling or install it"
            )
    return names


def preload(module: str) -> None:
    """Have the forkserver import ``module`` once, so children do not each import it.

    Effective only before the forkserver starts (its first child); later calls change nothing.
    """
    if module in ("__main__", "builtins") or not module:
        return
    from multiprocess import forkserver

    ctx = get_context("forkserver")
    modules = list(forkserver._forkserver._preload_modules)
    if module not in modules:
        ctx.set_forkserver_preload([*modules, module])


def launch(
    method: str,
    entry: Any,
    child_ends: tuple[int, ...],
    parent_ends: tuple[int, ...],
    options: dict[str, Any],
    name: str,
) -> Launched:
    """Start ``child_main(entry, ...)`` in a new process by ``method``; its multiprocess Process.

    ``child_ends`` go to the child (ctrl-in, ctrl-out, stdout, stderr); a forked child closes the
    inherited ``parent_ends``.
    """
    if method == "forkserver":
        _guard_forkserver()
    fds = tuple(FdBox(fd) for fd in child_ends)
    options = dict(options)
    if method != "fork":
        # A forked child keeps the host's stdlib multiprocessing authkey; others get it here
        # (multiprocess's own travels in the preparation data), or a proxy of the host's
        # multiprocessing.Manager() fails in them with AuthenticationError.
        options["authkey"] = bytes(std_process.current_process().authkey)
    else:
        _quiet_fork_warning()
        # A forked child inherits the parent's ends of its own pipes; holding the write end of its
        # control pipe it would never see end of file when the manager dies.
        options["close_fds"] = parent_ends
    proc = process_class(method)(
        target=child_main, args=(entry, fds, os.getpid(), options), name=f"procman:{name}", daemon=False
    )
    proc.start()
    # multiprocessing would join this process at interpreter exit and hang the host if it is still
    # running; procman's own atexit hook stops children instead.
    mp_process._children.discard(proc)
    return Launched(proc)


class Launched:
    """A started process, as procman needs it of multiprocess's Process and its popen object.

    Its status is stored as the popen's own return code, so that multiprocess's bookkeeping (and
    closing the process object) works, including the statuses multiprocess cannot get itself
    (procman._child.wire.UNKNOWN_STATUSES).
    """

    __slots__ = ("_proc",)

    def __init__(self, proc: Any) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    @property
    def sentinel(self) -> int:
        """The forkserver's status pipe (forkserver), or multiprocess's sentinel fd."""
        return int(self._proc._popen.sentinel)

    @property
    def exitcode(self) -> int | None:
        code = self._proc.exitcode
        return None if code is None else int(code)

    def status(self) -> int | None:
        """The status already collected, if any."""
        code = self._proc._popen.returncode
        return None if code is None else int(code)

    def record(self, code: int) -> int:
        """Store the status collected here (waitid on the pidfd, or an unknown status)."""
        self._proc._popen.returncode = code
        return code

    def read_forkserver_status(self) -> int:
        """The status the forkserver reports for its child, once its pidfd said it ended."""
        from multiprocess import forkserver

        try:
            return self.record(forkserver.read_signed(self._proc._popen.sentinel))
        except (OSError, EOFError):
            # End of file without a report: the forkserver died. multiprocess calls that EXIT(255),
            # which reads as the process's own choice; nobody knows its status.
            return self.record(wire.STATUS_FORKSERVER_DIED)

    def join(self, timeout: float) -> None:
        self._proc.join(timeout)

    def close(self) -> None:
        self._proc.close()
