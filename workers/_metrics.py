"""The pool's and the jobs' metrics (see procman._metrics for the model and the text format)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procman._proc.metrics import Family, to_prometheus

if TYPE_CHECKING:
    from ._pool import Pool


def pool_families(pool: Pool) -> list[Family]:
    """The pool's gauges and counters, and per job name its runs, run time, lateness and next run."""
    stats = pool.stats()
    gauges = [
        ("workers_pool_workers", "worker processes", stats.workers),
        ("workers_pool_idle_workers", "worker processes with nothing to run", stats.idle_workers),
        ("workers_pool_queued_jobs", "jobs due and waiting for a worker", stats.queued),
        ("workers_pool_scheduled_jobs", "timed one-off jobs not yet due", stats.scheduled),
        ("workers_pool_running_jobs", "jobs running in a worker now", stats.running),
    ]
    families = []
    for name, text, value in gauges:
        fam = Family(name, "gauge", text)
        fam.add({}, value)
        families.append(fam)
    restarts = Family(
        "workers_pool_worker_restarts", "counter", "worker processes replaced (crashed, recycled, exited)"
    )
    restarts.add({}, stats.worker_restarts)
    families.append(restarts)

    runs = Family(
        "workers_job_runs",
        "counter",
        "runs by final outcome: ok, error, crashed, timed-out, cancelled; and a schedule's runs "
        "skipped (overlap), missed (past the misfire grace) or interrupted (its host died)",
    )
    duration = Family("workers_job_duration_seconds", "histogram", "seconds a run took in its worker")
    lateness = Family(
        "workers_job_lateness_seconds", "histogram", "seconds from a run's due time to its start in a worker"
    )
    next_run = Family(
        "workers_job_next_run_timestamp_seconds",
        "gauge",
        "when the schedule runs next (absent: paused or done)",
    )
    seen: dict[str, dict[str, int]] = {}
    for js in pool.run_stats():
        seen[js.name] = dict(js.outcomes)
        labels = {"job": js.name}
        duration.add_histogram(labels, js.duration.buckets, js.duration.count, js.duration.sum)
        lateness.add_histogram(labels, js.lateness.buckets, js.lateness.count, js.lateness.sum)
    for sched in pool.schedules():
        counts = seen.setdefault(sched.name, {})
        counts.update(skipped=sched.skipped, missed=sched.missed, interrupted=sched.interrupted)
        nxt = sched.next_run_time
        if nxt is not None:
            next_run.add({"job": sched.name}, round(nxt.timestamp(), 3))
    for name in sorted(seen):
        for outcome, count in seen[name].items():
            runs.add({"job": name, "outcome": outcome}, count)
    families += [runs, duration, lateness, next_run]
    return [f for f in families if f.samples or f.type == "counter"]


class PoolCollector:
    """A ``prometheus_client`` collector of a :class:`workers.Pool`: the pool and its jobs.

    ::

        from prometheus_client import REGISTRY
        REGISTRY.register(workers.PoolCollector(pool))

    Needs ``prometheus_client`` (``pip install 'procworks[prometheus]'``). A pool that is shut down
    exports nothing.
    """

    def __init__(self, pool: Pool) -> None:
        from ._pool import Pool

        if not isinstance(pool, Pool):
            raise TypeError(f"PoolCollector takes a workers.Pool, got {pool!r}")
        self.pool = pool

    def collect(self) -> list[Any]:
        from ._errors import PoolClosed

        try:
            return to_prometheus(pool_families(self.pool))
        except PoolClosed:
            return []
