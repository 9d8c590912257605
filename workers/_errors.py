"""The errors workers raises or puts in futures.

::

    WorkersError(Exception)
    ├── WorkerCrashed(RuntimeError)      the worker running the job died (exit code / signal decoded)
    ├── JobTimeout(TimeoutError)         the job ran past its timeout; its worker was replaced
    ├── SerializationError(TypeError)    a job (at submit) or its result could not be pickled
    ├── PoolClosed(RuntimeError)         submit after shutdown, or a job the shutdown abandoned
    ├── PoolBroken(BrokenExecutor)       no worker can start (the initializer keeps failing)
    ├── PoolFull(RuntimeError)           max_pending reached (on_full="raise", or the wait ran out)
    └── ScheduleError(ValueError)        a bad trigger or schedule option

A job's own exception comes back as itself, with the worker's traceback as ``__cause__``.
"""

from __future__ import annotations

import concurrent.futures


class WorkersError(Exception):
    """Base class of every workers error."""


class WorkerCrashed(WorkersError, RuntimeError):
    """The worker process died while running the job. Only that job fails; the worker is replaced.

    Attributes:
        exitcode: multiprocessing-style (negative: the signal that killed it).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class JobTimeout(WorkersError, TimeoutError):
    """The job did not finish within its timeout; its worker was killed and replaced."""


class DaskBackendError(WorkersError, RuntimeError):
    """A pool cannot run on this Dask cluster, or Dask could not run a job; the message says why."""


class SerializationError(WorkersError, TypeError):
    """A job, or a job's result, could not be pickled (neither by pickle nor by dill)."""


class PoolClosed(WorkersError, RuntimeError):
    """The pool is shut down."""


class PoolBroken(WorkersError, concurrent.futures.BrokenExecutor):
    """The pool cannot start workers (the initializer keeps failing); see ``__cause__``.

    A :class:`concurrent.futures.BrokenExecutor` (so a RuntimeError), as ProcessPoolExecutor's
    BrokenProcessPool is: ``except BrokenExecutor`` catches both.
    """


class PoolFull(WorkersError, RuntimeError):
    """The bound on pending jobs (``max_pending``) was reached."""


class ScheduleError(WorkersError, ValueError):
    """A trigger or a schedule option is invalid."""
