"""The Dask backend against raw Dask, side by side and interleaved, on one 2-worker LocalCluster.

    .venv/bin/python bench/dask_compare.py [--rounds 8] [--json bench/results/dask.json]

Contenders, all alive at once and sampled in turn, round after round (the order shuffled each
round), on the same cluster (2 worker processes, 1 thread each, made as the backend requires):

- ``procworks[dask]``: ``workers.Pool(backend=workers.DaskBackend(address))``;
- ``client.submit``: a plain ``distributed.Client`` (``pure=False``), what the backend sits on;
- ``get_executor``: ``client.get_executor(pure=False)``, Dask's own concurrent.futures face;
- ``procworks local``: ``workers.Pool(2)``, worker processes of this machine, for scale.

Per round and contender: the round trip of ``add(1, 2)`` (p50 over ``--calls``), jobs/s of a burst,
and the timed figure: for ours, a job ``submit_after`` 20 ms, the time it started past its due time
(lateness, as the pool's stats count it); for raw Dask, the time from ``client.submit`` to the task
starting (its dispatch delay: what any timed job on Dask pays once due). Reported: each figure's
median over the rounds and the median of the per-round ratios with their spread. On this shared
machine the absolute times drift between runs; the ratios within a round do not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # dask_host.py, the tests' cluster

import dask_host  # noqa: E402
from jobs_bench import add, now  # noqa: E402

import workers  # noqa: E402

WAIT = 60.0
OURS = "procworks[dask]"
RAW = "client.submit"
EXECUTOR = "get_executor"
LOCAL = "procworks local"
Row = dict[str, Any]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def spread(values: list[float]) -> Row:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


class Contender:
    """submit(fn, *args) -> handle; wait(handle) -> value; delay(): one timed sample (seconds)."""

    def __init__(self, name: str, submit: Callable[..., Any], wait: Callable[[Any], Any]) -> None:
        self.name, self.submit, self.wait = name, submit, wait

    def round_trips(self, calls: int) -> list[float]:
        out = []
        for i in range(calls):
            t = time.perf_counter()
            self.wait(self.submit(add, i, 1))
            out.append(time.perf_counter() - t)
        return out

    def burst(self, count: int) -> float:
        t = time.perf_counter()
        for h in [self.submit(add, i, 1) for i in range(count)]:
            self.wait(h)
        return count / (time.perf_counter() - t)


def timed_ours(pool: workers.Pool, count: int) -> list[float]:
    """Lateness of jobs due 20 ms after submit: when each started (its own clock) past its due time."""
    late = []
    for _ in range(count):
        due = time.time() + 0.02
        started = pool.submit_after(0.02, now).result(WAIT)
        late.append(started - due)
    return late


def timed_raw(client: Any, count: int) -> list[float]:
    """Dask's dispatch delay: from client.submit to the task's start (its own clock)."""
    out = []
    for _ in range(count):
        t = time.time()
        started = client.submit(now, pure=False).result(WAIT)
        out.append(started - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=200, help="round trips per turn")
    ap.add_argument("--burst", type=int, default=500, help="jobs per burst")
    ap.add_argument("--timed", type=int, default=30, help="timed samples per turn")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from distributed import Client

    with dask_host.running(2, pythonpath=HERE) as host:  # the workers import the jobs by name
        return compare(args, Client, host.address)


def compare(args: argparse.Namespace, Client: Any, address: str) -> int:
    client = Client(address, set_as_default=False)
    executor = client.get_executor(pure=False)
    ours = workers.Pool(backend=workers.DaskBackend(address), on_event=None)
    local = workers.Pool(2, on_event=None)
    contenders = {
        OURS: Contender(OURS, ours.submit, lambda f: f.result(WAIT)),
        RAW: Contender(RAW, lambda fn, *a: client.submit(fn, *a, pure=False), lambda f: f.result(WAIT)),
        EXECUTOR: Contender(EXECUTOR, executor.submit, lambda f: f.result(WAIT)),
        LOCAL: Contender(LOCAL, local.submit, lambda f: f.result(WAIT)),
    }
    rng = random.Random(args.seed)
    rounds: list[Row] = []
    try:
        for c in contenders.values():  # warm up: imports, connections, workers' caches
            c.round_trips(50)
            c.burst(100)
        timed_ours(ours, 5)
        timed_raw(client, 5)
        for r in range(args.rounds):
            order = list(contenders)
            rng.shuffle(order)
            rec: Row = {"order": order, "rt_p50": {}, "jobs_per_s": {}}
            for name in order:
                c = contenders[name]
                c.round_trips(10)
                rec["rt_p50"][name] = pct(c.round_trips(args.calls), 0.5)
                rec["jobs_per_s"][name] = c.burst(args.burst)
                if name == OURS:
                    rec["lateness_p50"] = pct(timed_ours(ours, args.timed), 0.5)
                elif name == RAW:
                    rec["dispatch_p50"] = pct(timed_raw(client, args.timed), 0.5)
            rounds.append(rec)
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n} {rec['rt_p50'][n] * 1e3:.2f} ms" for n in contenders)
                + f"; lateness p50 {rec['lateness_p50'] * 1e3:.2f} ms"
                + f" vs dispatch {rec['dispatch_p50'] * 1e3:.2f} ms",
                file=sys.stderr,
            )
    finally:
        ours.shutdown(timeout=30)
        local.shutdown(timeout=30)
        executor.shutdown(wait=True)
        client.close()

    out: Row = {"rounds": rounds, "figures": {}, "ratios": {}}
    for name in contenders:
        out["figures"][name] = {
            "rt_p50_ms": spread([r["rt_p50"][name] * 1e3 for r in rounds]),
            "jobs_per_s": spread([r["jobs_per_s"][name] for r in rounds]),
        }
    for peer in (RAW, EXECUTOR, LOCAL):
        out["ratios"][f"rt {OURS} / {peer}"] = spread([r["rt_p50"][OURS] / r["rt_p50"][peer] for r in rounds])
        out["ratios"][f"jobs/s {OURS} / {peer}"] = spread(
            [r["jobs_per_s"][OURS] / r["jobs_per_s"][peer] for r in rounds]
        )
    out["timed"] = {
        "lateness_p50_ms": spread([r["lateness_p50"] * 1e3 for r in rounds]),
        "raw_dispatch_p50_ms": spread([r["dispatch_p50"] * 1e3 for r in rounds]),
        "difference_ms": spread([(r["lateness_p50"] - r["dispatch_p50"]) * 1e3 for r in rounds]),
    }
    print("\nmedian over rounds (q1-q3):")
    for name, fig in out["figures"].items():
        rt, js = fig["rt_p50_ms"], fig["jobs_per_s"]
        print(
            f"  {name:16} round trip {rt['median']:.2f} ms ({rt['q1']:.2f}-{rt['q3']:.2f})   "
            f"{js['median']:.0f} jobs/s ({js['q1']:.0f}-{js['q3']:.0f})"
        )
    print("per-round ratios, median (q1-q3):")
    for what, sp in out["ratios"].items():
        print(f"  {what:40} {sp['median']:.2f} ({sp['q1']:.2f}-{sp['q3']:.2f})")
    t = out["timed"]
    print(
        f"timed: our lateness p50 {t['lateness_p50_ms']['median']:.2f} ms, raw Dask dispatch p50 "
        f"{t['raw_dispatch_p50_ms']['median']:.2f} ms, difference {t['difference_ms']['median']:+.2f} ms "
        f"({t['difference_ms']['q1']:+.2f} to {t['difference_ms']['q3']:+.2f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
