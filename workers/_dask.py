"""Jobs on a Dask distributed cluster: what the user names (DaskBackend) and the connection to it.

The pool keeps everything but the running: its timed heap, retries, timeouts, schedules and
futures stay in this process, and a job due goes to Dask as one task (workers._dask_workers). This
module is the way in: the options refused on Dask, the connection made in ``Pool()`` (an
asynchronous Client on the pool's I/O loop), the checks that refuse a cluster that cannot give the
pool's semantics, and the local cluster made for a pool given no address, in a procman child
(procman._child.dask_cluster) so that a script with no main guard works.

``distributed`` is imported only here and in workers._dask_workers, when a DaskBackend is made: the
extra ``procworks[dask]`` is optional.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from typing import Any

from procman._child import dask_task
from procman._child import wire as _wire
from procman._child.dask_cluster import cluster_main
from procman._proc.child import Child

from ._checks import check_count, check_seconds
from ._errors import DaskBackendError

log = logging.getLogger("workers.dask")

RPC_TIMEOUT = 10.0  # seconds for one call to the scheduler or a worker
HOST_STOP = 15.0  # seconds for the local cluster to close before its processes are killed
_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "workers.DaskBackend needs Dask distributed: pip install 'procworks[dask]'"
        ) from exc
    return distributed


class DaskBackend:
    """Run a :class:`workers.Pool`'s jobs on a Dask distributed cluster: ``Pool(backend=...)``.

    Args:
        cluster: the scheduler's address (``"tcp://host:8786"``), a ``distributed.Client``
            connected to it, or None (default) for a local cluster made for this pool: one process
            per worker, one thread each, on loopback (its HTTP server on a port of its own), in a
            child process that ends with the pool.
        n_workers: the local cluster's workers (default: the pool's ``max_workers``, else the
            CPUs this process may use); only without ``cluster``.
        connect_timeout: seconds for ``Pool()`` to connect (and to start the local cluster).

    The scheduler must run with ``allowed-failures`` 0 and ``worker-saturation`` 1.0 (otherwise a
    worker that dies also fails a job that never ran on it); ``Pool()`` refuses one that does not,
    and one whose workers have other versions of procworks, dill or Python than this process.
    """

    def __init__(
        self, cluster: Any = None, *, n_workers: int | None = None, connect_timeout: float = 30.0
    ) -> None:
        distributed = import_distributed()
        if cluster is not None and not isinstance(cluster, str | distributed.Client):
            raise TypeError(
                f"cluster={cluster!r} must be a scheduler address such as 'tcp://host:8786', a "
                "distributed.Client, or None for a local cluster"
            )
        if isinstance(cluster, str) and not _ADDRESS.match(cluster):
            raise ValueError(
                f"cluster={cluster!r} is not a scheduler address: give one such as 'tcp://host:8786'"
            )
        if cluster is not None and n_workers is not None:
            raise ValueError("n_workers= sizes the local cluster only: give it without cluster=")
        self.cluster = cluster
        self.n_workers = check_count("n_workers", n_workers, minimum=1)
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout, allow_none=False) or 30.0

    def __repr__(self) -> str:
        where = "a local cluster" if self.cluster is None else repr(self.cluster)
        return f"DaskBackend({where})"


def _scheduler_settings_probe() -> Any:
    # A function made here is pickled by value: the scheduler needs no procworks to run it.
    def probe(dask_scheduler: Any) -> list[Any]:
        return [dask_scheduler.allowed_failures, dask_scheduler.WORKER_SATURATION]

    return probe


def check_dask_options(
    backend: object, initializer: object, max_tasks_per_worker: object, max_memory_mb: object
) -> None:
    """Refuse, at Pool(), what cannot hold on a Dask cluster, with the reason and what to do."""
    if not isinstance(backend, DaskBackend):
        raise TypeError(f"backend={backend!r} must be None (local processes) or a workers.DaskBackend")
    if initializer is not None:
        raise ValueError(
            "initializer= is not supported with a Dask backend: Dask workers are the cluster's, shared "
            "and outliving the pool; register a distributed.WorkerPlugin on the cluster instead"
        )
    if max_tasks_per_worker is not None:
        raise ValueError(
            "max_tasks_per_worker= is not supported with a Dask backend: the pool cannot retire the "
            "cluster's workers; give them a lifetime instead (dask worker --lifetime, --lifetime-restart)"
        )
    if max_memory_mb is not None:
        raise ValueError(
            "max_memory_mb= is not supported with a Dask backend: the pool does not see the workers' "
            "memory; set the workers' memory_limit, which their nannies enforce"
        )


class DaskConnection:
    """A pool's connection to its cluster: an asynchronous Client on the pool's I/O loop, and the
    local cluster's child when the pool made one. Connected (or refused) in Pool()."""

    def __init__(
        self,
        spec: DaskBackend,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        start_method: str,
        n_workers: int,
    ) -> None:
        self.spec = spec
        self.loop = loop
        self.name = name
        self.start_method = start_method
        self.n_workers = n_workers  # for a local cluster
        self.client: Any = None
        self.address = ""
        self.host: Child | None = None
        self.host_lines: list[str] = []
        self.host_exited: asyncio.Future[int] | None = None
        self.stamp = dask_task.stamp()

    async def connect(self) -> None:
        distributed = import_distributed()
        cluster = self.spec.cluster
        security = None
        if cluster is None:
            self.address = await self.start_host()
        elif isinstance(cluster, str):
            self.address = cluster
        else:
            self.address = cluster.scheduler.address
            security = cluster.security
        try:
            self.client = await distributed.Client(
                self.address,
                asynchronous=True,
                set_as_default=False,
                timeout=self.spec.connect_timeout,
                security=security,
                name=f"procworks-{self.name}",
            )
        except (OSError, TimeoutError) as exc:
            raise DaskBackendError(
                f"cannot connect to the Dask scheduler at {self.address}: {type(exc).__name__}: {exc}"
            ) from exc
        await self.check()

    async def check(self) -> None:
        """Refuse a scheduler or workers that cannot give the pool's semantics."""
        failures, saturation = await asyncio.wait_for(
            self.client.run_on_scheduler(_scheduler_settings_probe()), RPC_TIMEOUT
        )
        if failures != 0 or saturation != 1.0:
            raise DaskBackendError(
                f"the Dask scheduler at {self.address} has allowed-failures={failures} and "
                f"worker-saturation={saturation}; a pool needs 0 and 1.0, or a worker that dies "
                "fails jobs that never ran on it. Start the scheduler with "
                "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 and "
                "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0 in its environment (or "
                "dask.config.set({'distributed.scheduler.allowed-failures': 0, "
                "'distributed.scheduler.worker-saturation': 1.0}) before LocalCluster()), or give "
                "no cluster to DaskBackend() for a local one made so."
            )
        try:
            stamps = await asyncio.wait_for(self.client.run(dask_task.versions), RPC_TIMEOUT)
        except (ImportError, AttributeError) as exc:
            raise DaskBackendError(
                f"the Dask workers of {self.address} cannot run the pool's jobs: {type(exc).__name__}: "
                f"{exc}. Install procworks on every worker (the same version as here: {self.stamp})."
            ) from exc
        other = {addr: s for addr, s in stamps.items() if s != self.stamp}
        if other:
            listed = "; ".join(f"{addr} has {s}" for addr, s in sorted(other.items()))
            raise DaskBackendError(
                f"Dask workers with other versions than this process ({self.stamp}): {listed}. "
                "A job's bytes load only with the same versions: install them alike."
            )

    async def start_host(self) -> str:
        """Start the local cluster's child; its scheduler's address."""
        n = self.n_workers
        ready: asyncio.Future[str] = self.loop.create_future()
        self.host_exited = exited = self.loop.create_future()
        error: list[BaseException] = []

        def on_frame(body: bytes) -> None:
            if body[0] != _wire.KIND_JSON:
                return
            msg = _wire.decode_json(body)
            if msg.get("t") == "ready" and not ready.done():
                ready.set_result(str(msg["address"]))
            elif msg.get("t") == "error":
                error.append(_wire.rebuild_error(msg))

        def on_line(stream: str, line: str) -> None:
            self.host_lines = [*self.host_lines[-19:], line]
            log.debug("dask cluster | %s", line)

        def on_exit(code: int) -> None:
            if not exited.done():
                exited.set_result(code)

        child = self.host = Child(
            self.loop,
            self.start_method,
            functools.partial(cluster_main, n),
            name="dask-cluster",
            title=f"procman: dask cluster ({self.name})",
            on_frame=on_frame,
            on_line=on_line,
            on_exit=on_exit,
        )
        child.start()
        done, _ = await asyncio.wait(
            (ready, exited), timeout=self.spec.connect_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready.done():
            return ready.result()
        child.kill()
        why = (
            f"it exited: {_wire.describe_exit(exited.result())}"
            if exited in done
            else f"it was not up within connect_timeout={self.spec.connect_timeout}s"
        )
        tail = "\n".join(self.host_lines[-10:])
        raise DaskBackendError(
            f"the local Dask cluster did not start: {why}" + (f"\n{tail}" if tail else "")
        ) from (error[0] if error else None)

    async def close(self) -> None:
        """Close the client, then stop the local cluster (bounded: killed if it does not stop)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), RPC_TIMEOUT)
        host = self.host
        if host is not None and self.host_exited is not None:
            host.send(_wire.encode_json({"t": "stop"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.host_exited), HOST_STOP)
            if not self.host_exited.done():
                host.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.host_exited), 2.0)

    def force_close(self) -> None:
        """After the loop ended without close(): kill the local cluster's processes."""
        if self.host is not None and self.host.alive:
            self.host.force_close()
