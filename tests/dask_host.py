"""A Dask LocalCluster for the tests, in a process of its own: ``python tests/dask_host.py N``.

It prints the scheduler's address on its first line and runs until its stdin closes (the test
session ends, or dies). Configured as the Dask backend requires (allowed-failures 0,
worker-saturation 1.0) unless ``defaults`` follows N; processes, one thread each, no dashboard,
loopback only.
"""

from __future__ import annotations

import logging
import sys

import dask

if __name__ == "__main__":
    if sys.argv[2:] != ["defaults"]:
        dask.config.set(
            {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
        )
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=int(sys.argv[1]),
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",  # its HTTP server (health, metrics): loopback, any port
        host="127.0.0.1",
        scheduler_port=0,
        silence_logs=logging.CRITICAL,
    ) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()
