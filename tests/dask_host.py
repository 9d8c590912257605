"""A Dask LocalCluster for the tests and benchmarks, in a process of its own.

``python tests/dask_host.py N [defaults]`` prints the scheduler's address on its first line and runs
until its stdin closes (the test session ends, or dies). The cluster is the one the Dask backend
makes for itself (procman._child.dask_cluster.local_cluster): N worker processes of one thread on
loopback, allowed-failures 0 and worker-saturation 1.0, or Dask's defaults with ``defaults``.
:func:`running` starts one from a test or a benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    address: str  # the scheduler's
    pid: int  # the host process's: the cluster's processes are below it


@contextlib.contextmanager
def running(n_workers: int, *, defaults: bool = False, pythonpath: str | None = None) -> Iterator[Host]:
    """A cluster in a process of its own for the ``with`` block; its workers import from ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    cmd = [sys.executable, os.path.abspath(__file__), str(n_workers), *(["defaults"] if defaults else [])]
    host = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert host.stdin is not None and host.stdout is not None
    try:
        address = host.stdout.readline().strip()  # bounded: the host exits if it cannot start
        assert address.startswith("tcp://"), f"the Dask cluster did not start (said {address!r})"
        yield Host(address, host.pid)
    finally:
        host.stdin.close()
        try:
            host.wait(60)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait(10)
        host.stdout.close()


if __name__ == "__main__":
    from procman._child.dask_cluster import local_cluster

    configured = sys.argv[2:] != ["defaults"]
    with local_cluster(int(sys.argv[1]), configured=configured, silence=logging.CRITICAL) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()
