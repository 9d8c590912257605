"""procworks demo: daemons in supervised child processes, and a timed job on a worker pool.

Runs an HTTP server (asyncio on uvloop), a queue consumer that crashes now and then and is
restarted under backoff, and a prober that checks the server's health endpoint - each in its own
process - plus a CPU-heavy job every 2 seconds on a pool of worker processes. Ctrl-C (or
SIGTERM) stops everything gracefully; a second Ctrl-C kills at once.

    python examples/demo.py             # until Ctrl-C
    python examples/demo.py --seconds 8 # stop by itself after 8 seconds
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo_daemons import FlakyConsumer, HealthProber, HealthServer, count_primes

import procman
import workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _report_runs(schedule: workers.Schedule) -> None:
    seen = 0
    while schedule.wait(runs=seen + 1, timeout=3600):
        seen = schedule.runs
        if schedule.last_error is not None:
            print(f"demo: count-primes failed: {schedule.last_error!r}", flush=True)
        elif schedule.last_result is not None:
            pid, count, took = schedule.last_result
            print(f"demo: count-primes run {seen}: {count} primes in {took:.2f}s (worker {pid})", flush=True)
        if schedule.state is not workers.ScheduleState.ACTIVE:
            return


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--start-method", default="forkserver", choices=["forkserver", "fork", "spawn"])
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s.%(msecs)03d %(name)-28s %(message)s", datefmt="%H:%M:%S"
    )
    port = free_port()
    manager = procman.Manager(start_method=args.start_method)
    manager.register(HealthServer("http-server", port), restart="always")
    manager.register(
        FlakyConsumer("queue-consumer"),
        restart=procman.RestartPolicy(restart="on-failure", backoff_initial=0.5, max_restarts=20, within=60),
        watchdog=5.0,
    )
    manager.register(HealthProber("health-prober", port))
    if args.seconds is not None:
        timer = threading.Timer(args.seconds, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    pool = workers.Pool(2, start_method=args.start_method)
    primes = pool.schedule(count_primes, every=2.0, args=(150_000,), name="count-primes", timeout=30)

    print(f"demo: starting 3 daemons and a timed job ({args.start_method}); Ctrl-C to stop", flush=True)
    reporter = threading.Thread(target=_report_runs, args=(primes,), daemon=True)
    reporter.start()
    try:
        report = manager.run(stop_timeout=10)
    finally:
        status = manager.status() if not manager.running else {}
        manager.close()
        pool.shutdown(wait=True, cancel_futures=True, timeout=10)
    print(f"demo: count-primes ran {primes.runs} time(s), {primes.failures} failed", flush=True)
    for name, outcome in report.outcomes.items():
        st = status.get(name)
        restarts = st.restarts if st else 0
        print(f"demo: {name:<15} {outcome.value:<10} restarts={restarts}", flush=True)
    print("demo: stopped cleanly" if report.clean else "demo: some daemons had to be killed", flush=True)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
