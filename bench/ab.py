"""Before/after comparison of our own pool across two checkouts, interleaved at process granularity.

    .venv/bin/python bench/ab.py --before /path/to/old/checkout --after /path/to/new/checkout [--rounds N]

Why: on a shared machine two sequential runs drift (the pipe floor has moved 2.5x within a day), so a
change measured as "run the old tree, then the new one" mixes the change with the drift. Here each round
runs one fresh interpreter per side, the order alternating from round to round, and each figure is
reported as the median of the per-round after/before ratios: the drift common to a round cancels.

A side is ``python -P -c ...`` with PYTHONPATH set to its checkout, then the after checkout's bench/ (for
bench/jobs_bench.py, a job module that both trees can import), and run from an empty directory, so that
``import procman, workers`` loads that checkout (each run reports ``workers.__file__``; a run that loaded
another tree counts as failed). Each run prints one JSON line: round trip p50/p99 of add(1, 2) over 500
sequential calls after a warm-up, jobs/s of a 5000-job burst, and the lateness p50/p99 of 50 timed jobs
5 ms apart, submitted with submit_at and submit_after in turn. Every run has a timeout, runs in its own
process group (killed with it), and a failed run is printed with its reason and left out of the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
Row = dict[str, Any]

WORKERS = 2
RT_WARM = 100
RT_CALLS = 500
BURST = 5000
TIMED = 50
TIMED_SPACING = 0.005
TIMED_LEAD = 0.3
RUN_TIMEOUT = 180.0

# (key, label, kind): kind "time" is better lower, "rate" better higher
FIGURES = [
    ("rt_p50", "round trip p50, add(1, 2)", "time"),
    ("rt_p99", "round trip p99, add(1, 2)", "time"),
    ("jobs_per_s", f"jobs/s, {BURST:,} submitted at once", "rate"),
    ("late_p50", f"lateness p50, {TIMED} timed jobs", "time"),
    ("late_p99", f"lateness p99, {TIMED} timed jobs", "time"),
]

# The child: this module from HERE (then HERE leaves sys.path again, so that jobs_bench, procman and
# workers resolve through PYTHONPATH alone).
CHILD = "import sys; sys.path.insert(0, {here!r}); import ab; sys.path.remove({here!r}); sys.exit(ab.child())"


# -- the child: one side's measurements -----------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (as in compare.py)."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))]


def child() -> int:
    """Measure the pool of whatever tree PYTHONPATH points at; print one JSON line."""
    import jobs_bench

    import procman
    import workers

    pool = workers.Pool(WORKERS)
    try:
        # warm-up: both workers started and busy, the dispatch and results paths exercised
        for f in [pool.submit(jobs_bench.add, i, 1) for i in range(200)]:
            f.result(60)
        for _ in range(RT_WARM):
            pool.submit(jobs_bench.add, 1, 2).result(30)
        rts = []
        for _ in range(RT_CALLS):
            t = time.perf_counter()
            value = pool.submit(jobs_bench.add, 1, 2).result(30)
            rts.append(time.perf_counter() - t)
            if value != 3:
                raise AssertionError(f"wrong result {value!r}")
        for f in [pool.submit(jobs_bench.add, i, 1) for i in range(BURST // 10)]:  # warm-up burst
            f.result(60)
        t = time.perf_counter()
        futs = [pool.submit(jobs_bench.add, i, 1) for i in range(BURST)]
        for f in futs:
            f.result(120)
        rate = BURST / (time.perf_counter() - t)
        warm_start = time.time() + 0.1
        for tf in [pool.submit_at(warm_start + i * 0.01, jobs_bench.now) for i in range(20)]:
            tf.result(60)
        start = time.time() + TIMED_LEAD
        timed = []
        for i in range(TIMED):
            due = start + i * TIMED_SPACING
            if i % 2:
                timed.append((due, pool.submit_after(due - time.time(), jobs_bench.now)))
            else:
                timed.append((due, pool.submit_at(due, jobs_bench.now)))
        late = [f.result(60) - due for due, f in timed]
    finally:
        pool.shutdown(wait=True, cancel_futures=True, timeout=30)
    row = {
        "workers_file": workers.__file__,
        "procman_file": procman.__file__,
        "jobs_file": jobs_bench.__file__,
        "rt_p50": pct(rts, 0.5),
        "rt_p99": pct(rts, 0.99),
        "jobs_per_s": rate,
        "late_p50": pct(late, 0.5),
        "late_p99": pct(late, 0.99),
        "early": sum(1 for x in late if x < 0),
    }
    print(json.dumps(row), flush=True)
    return 0


# -- the parent: rounds, sides, ratios ------------------------------------------------------------


def describe(checkout: str) -> str:
    """The checkout's commit, and whether its tree has changes not committed (it is measured as is)."""

    def git(*args: str) -> str:
        try:
            res = subprocess.run(
                ["git", "-C", checkout, *args], check=False, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "procman", "workers")
    return f"{rev}{' + uncommitted changes in procman/ or workers/' if dirty else ''}"


def tree_digest(checkout: str) -> str:
    """A digest of the checkout's procman/ and workers/ sources: the after side may be a tree that others
    edit meanwhile, and a run measures whatever is on disk when it starts."""
    h = hashlib.sha256()
    for package in ("procman", "workers"):
        for root, dirs, files in os.walk(os.path.join(checkout, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, checkout).encode() + b"\0")
                with contextlib.suppress(OSError), open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


def run_side(checkout: str, bench_dir: str, scratch: str) -> Row:
    """One fresh interpreter on one checkout: its JSON line, or {"error": ...}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([checkout, bench_dir])
    code = CHILD.format(here=HERE)
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", code],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the forkserver and workers go with it
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        return {"error": f"timed out after {RUN_TIMEOUT:g} s"}
    finally:
        if proc.poll() is None:  # Ctrl-C or another error while waiting
            kill_group(proc.pid)
            proc.wait()
    stragglers = reap_group(proc.pid)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no output"
        return {"error": f"exit status {proc.returncode}: {tail}"[:300]}
    row: Row = json.loads(lines[-1])
    if stragglers:
        row["stragglers_killed"] = True
    real = os.path.realpath(checkout) + os.sep
    for key in ("workers_file", "procman_file"):
        if not os.path.realpath(row[key]).startswith(real):
            return {"error": f"loaded {row[key]}, not from {checkout}"}
    return row


def reap_group(pgid: int, grace: float = 5.0) -> bool:
    """After a run: its forkserver and resource tracker exit on their own once their pipe closes; what
    is still there after grace seconds is killed. True if anything had to be."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        time.sleep(0.02)
    return kill_group(pgid)


def kill_group(pgid: int) -> bool:
    """SIGKILL whatever is left of a run's process group; True if anything was."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def spread(values: list[float]) -> Row:
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(kind: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    if kind == "rate":
        return f"{x:,.0f}/s"
    if abs(x) < 1e-3:
        return f"{x * 1e6:,.0f} us"
    return f"{x * 1e3:,.2f} ms" if abs(x) < 1 else f"{x:,.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="the old checkout (its procman/ and workers/)")
    parser.add_argument("--after", required=True, help="the new checkout; its bench/ provides the job")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, each running both sides (7)")
    parser.add_argument("--json", metavar="PATH", help="write every run's figures to this file")
    args = parser.parse_args()
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    bench_dir = os.path.join(sides["after"], "bench")
    for name, path in sides.items():
        if not os.path.isfile(os.path.join(path, "workers", "__init__.py")):
            parser.error(f"--{name} {path}: no workers/ package there")
    if not os.path.isfile(os.path.join(bench_dir, "jobs_bench.py")):
        parser.error(f"{bench_dir}/jobs_bench.py is missing")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.perf_counter()
    trees = {side: describe(path) for side, path in sides.items()}  # the commits at the start
    runs: list[Row] = []
    seen_file: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ab-") as scratch:
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            rec: Row = {"round": r + 1, "order": order}
            for side in order:
                t = time.perf_counter()
                digest = tree_digest(sides[side])
                rec[side] = row = run_side(sides[side], bench_dir, scratch)
                row["tree"] = digest
                took = time.perf_counter() - t
                if "error" in row:
                    print(f"  round {r + 1}, {side}: FAILED ({took:.1f} s): {row['error']}", file=sys.stderr)
                    continue
                print(f"  round {r + 1}, {side}: {took:.1f} s", file=sys.stderr)
                if side not in seen_file:
                    seen_file[side] = row["workers_file"]
                    print(f"  {side} loads {row['workers_file']}", file=sys.stderr)
            runs.append(rec)
    out: Row = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "before": {"path": sides["before"], "tree": trees["before"]},
        "after": {"path": sides["after"], "tree": trees["after"]},
        "workers_file": seen_file,
        "rounds": runs,
        "figures": summarize(runs),
        "seconds": time.perf_counter() - started,
    }
    print_table(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nJSON written to {args.json}")
    return 1 if any("error" in rec[s] for rec in runs for s in ("before", "after")) else 0


def summarize(runs: list[Row]) -> Row:
    """Per figure: each side's median over its good runs, and the after/before ratios of the good rounds."""
    out: Row = {}
    for key, _, _ in FIGURES:
        before = [rec["before"][key] for rec in runs if key in rec["before"]]
        after = [rec["after"][key] for rec in runs if key in rec["after"]]
        ratios = [
            rec["after"][key] / rec["before"][key]
            for rec in runs
            if key in rec["after"] and rec["before"].get(key, 0) > 0
        ]
        out[key] = {
            "before": spread(before) if before else None,
            "after": spread(after) if after else None,
            "ratio": spread(ratios) if ratios else None,
        }
    return out


def print_table(out: Row) -> None:
    runs = out["rounds"]
    print(f"\nprocworks before/after, {out['date']}, {len(runs)} rounds, the order alternating per round")
    for side in ("before", "after"):
        print(f"  {side:<7}{out[side]['path']} ({out[side]['tree']}, sources {runs[0][side]['tree']})")
        print(f"         loads {out['workers_file'].get(side, 'n/a: no run succeeded')}")
    print("after/before per round, median (min-max): < 1 is better for times, > 1 for jobs/s\n")
    w = (36, 12, 12, 24)
    print(f"{'figure':<{w[0]}}{'before':>{w[1]}}{'after':>{w[2]}}{'after/before':>{w[3]}}")
    print("-" * sum(w))
    for key, label, kind in FIGURES:
        fig = out["figures"][key]
        b, a, r = fig["before"], fig["after"], fig["ratio"]
        ratio = "n/a" if r is None else f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
        print(
            f"{label:<{w[0]}}{fmt(kind, b and b['median']):>{w[1]}}"
            f"{fmt(kind, a and a['median']):>{w[2]}}{ratio:>{w[3]}}"
        )
    for side in ("before", "after"):
        trees = list(dict.fromkeys(rec[side]["tree"] for rec in runs))
        if len(trees) > 1:
            which = ", ".join(
                f"{t}: rounds {[rec['round'] for rec in runs if rec[side]['tree'] == t]}" for t in trees
            )
            print(f"! {side}: its procman/ and workers/ changed during the run ({which})")
    for rec in runs:
        for side in ("before", "after"):
            row = rec[side]
            if "error" in row:
                print(f"! round {rec['round']}, {side}: {row['error']}")
            elif row.get("early"):
                print(f"! round {rec['round']}, {side}: {row['early']} timed jobs ran early")
            if row.get("stragglers_killed"):
                print(f"! round {rec['round']}, {side}: processes left behind, killed")
    print(f"\nrun took {out['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
