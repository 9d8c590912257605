"""A Dask LocalCluster hosted in a procman child, for a pool on Dask with no cluster of its own.

Why a child and not the pool's own process: Dask's nanny starts each worker with the standard
library's ``spawn``, which re-imports the host's main script, so a script with no main guard that
makes a LocalCluster starts itself again in every worker. A procman child never re-imports the
host's script (procman._proc.start), so what Dask spawns from here does not either. The child also
keeps the scheduler's work off the pool's process, and dies with it: its process group (the
scheduler, the nannies, their workers) is killed when the pool's process is gone.

The cluster is the one the Dask backend needs: processes, one thread per worker, a scheduler on
loopback (its HTTP server on a port of its own, never 8787) with ``allowed-failures`` 0 (a worker
that dies fails the job it ran, not on a third death) and ``worker-saturation`` 1.0 (a large group
of tasks waits on the scheduler for a free thread rather than on a worker behind another).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .boot import Channel

# The scheduler's settings, as environment variables too: the workers the nannies spawn inherit them.
DASK_SETTINGS = {
    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
}
CLOSE_TIMEOUT = 10.0  # seconds for the cluster to close on a stop before the child exits anyway


def local_cluster(n_workers: int, *, configured: bool = True, silence: int = logging.ERROR) -> Any:
    """A LocalCluster as the Dask backend needs it (``configured=False``: Dask's defaults, which
    the backend refuses; for its tests)."""
    if configured:
        os.environ.update(DASK_SETTINGS)
    import dask  # the optional extra: imported where a cluster is made, never by the pool's host
    from distributed import LocalCluster

    if configured:  # dask may have read the environment before: set them here too
        dask.config.set(
            {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
        )
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",  # its HTTP server (health, metrics): loopback, any port
        host="127.0.0.1",
        scheduler_port=0,
        silence_logs=silence,
    )


def cluster_main(n_workers: int, chan: Channel) -> int:
    """Start the cluster, tell the pool its scheduler's address, run until asked to stop."""
    cluster = local_cluster(n_workers)
    try:
        chan.send({"t": "ready", "address": cluster.scheduler_address})
        chan.stop_requested.wait()
    finally:
        cluster.close(timeout=CLOSE_TIMEOUT)
    return 0
