"""What a store costs, side by side in one run: a memory-only pool against a pool on a SQLite store.

    .venv/bin/python bench/store_compare.py [--rounds 5] [--jobs 100000] [--json bench/results/store.json]

Per round (the order of the two pools alternated):

- **adding timed jobs**: ``--jobs`` ``submit_at`` calls due an hour ahead, timed from the first call
  until every job is committed to the store (for the memory-only pool: until the calls return);
- **lateness**: 200 jobs ``submit_at`` 0.2 to 1.7 s ahead, each starting in an idle worker; the
  pool's ``stats().lateness_p50`` and p99 (the time a job started past its due time, measured in
  the worker), for both pools alive at once.

Reported: medians over the rounds and the median of the per-round ratios (store / memory); on
this shared machine absolute times drift, the ratios within a round much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import workers


def nothing() -> None:
    return None


def add_jobs(pool: workers.Pool, n: int) -> float:
    far = time.time() + 3600
    t0 = time.perf_counter()
    for i in range(n):
        pool.submit_at(far + i * 0.001, nothing)
    store = pool._store
    if store is not None:
        store.call(lambda cur: None)  # queued after every insert: returns once they are committed
    return time.perf_counter() - t0


def lateness(pool: workers.Pool, n: int = 200) -> tuple[float, float]:
    base = time.time() + 0.2
    futs = [pool.submit_at(base + i * 0.0075, nothing) for i in range(n)]
    for f in futs:
        f.result(60)
    st = pool.stats()
    assert st.lateness_p50 is not None and st.lateness_p99 is not None
    return st.lateness_p50, st.lateness_p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            order = ["memory", "sqlite"] if r % 2 == 0 else ["sqlite", "memory"]
            for kind in order:
                url = f"sqlite:///{tmp}/add-{r}.db" if kind == "sqlite" else None
                with workers.Pool(2, store=url, on_event=None) as pool:
                    row[f"add_{kind}"] = add_jobs(pool, args.jobs)
                    pool.shutdown(cancel_futures=True)
            mem = workers.Pool(2, on_event=None)
            sql = workers.Pool(2, store=f"sqlite:///{tmp}/late-{r}.db", on_event=None)
            try:
                for kind, pool in (
                    (("memory", mem), ("sqlite", sql))
                    if r % 2 == 0
                    else (
                        ("sqlite", sql),
                        ("memory", mem),
                    )
                ):
                    row[f"p50_{kind}"], row[f"p99_{kind}"] = lateness(pool)
            finally:
                mem.shutdown()
                sql.shutdown()
            rows.append(row)
            ms = {k: v * 1e3 for k, v in row.items() if k.startswith("p")}
            print(
                f"round {r + 1}: add {args.jobs}: memory {row['add_memory']:.3f}s"
                f" sqlite {row['add_sqlite']:.3f}s; lateness p50 memory {ms['p50_memory']:.3f}ms"
                f" sqlite {ms['p50_sqlite']:.3f}ms, p99 memory {ms['p99_memory']:.3f}ms"
                f" sqlite {ms['p99_sqlite']:.3f}ms",
                flush=True,
            )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rows)

    summary = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "add_memory_s": med("add_memory"),
        "add_sqlite_s": med("add_sqlite"),
        "lateness_p50_memory_ms": med("p50_memory") * 1e3,
        "lateness_p50_sqlite_ms": med("p50_sqlite") * 1e3,
        "lateness_p99_memory_ms": med("p99_memory") * 1e3,
        "lateness_p99_sqlite_ms": med("p99_sqlite") * 1e3,
        "lateness_p50_ratio_sqlite_to_memory": ratio("p50_sqlite", "p50_memory"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rounds": rows}, f, indent=2)


if __name__ == "__main__":
    main()
