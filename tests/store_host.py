"""A host process sharing a store with others (tests/test_store.py starts, kills and restarts it).

    python store_host.py URL LOG START END INTERVAL [redeliver]
    python store_host.py job URL LOG once|redeliver

It declares the schedule ``tick`` (every INTERVAL seconds from START to END, never missed, each
time run) and runs until killed; each run appends its fire time to LOG, so the test counts the
runs of each fire time, whichever host ran them.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import workers


def record(log: str) -> None:
    t = workers.scheduled_time()
    assert t is not None
    line = f"{t.timestamp()!r} {os.getppid()}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


def slow_job(log: str) -> None:
    """A job that takes a while: a line when it starts, one when it ends."""
    with open(log, "a") as f:
        f.write("start\n")
    time.sleep(2.0)
    with open(log, "a") as f:
        f.write("end\n")


def one_job(url: str, log: str, redeliver: bool) -> None:
    """``store_host.py job URL LOG once|redeliver``: submit slow_job, then wait to be killed."""
    with workers.Pool(1, store=workers.Store(url, poll=0.1, lease=3.0), on_event=None) as pool:
        pool.submit_job(slow_job, (log,), after=0.1, redeliver=redeliver)
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def main() -> None:
    if sys.argv[1] == "job":
        one_job(sys.argv[2], sys.argv[3], sys.argv[4] == "redeliver")
        return
    url, log, start, end, interval = sys.argv[1:6]
    redeliver = sys.argv[6:] == ["redeliver"]
    store = workers.Store(url, poll=0.1, lease=3.0, history=100_000)  # the test reads every run
    with workers.Pool(2, store=store, on_event=None) as pool:
        pool.schedule(
            record,
            every=float(interval),
            start=float(start),
            end=float(end),
            args=(log,),
            name="tick",
            misfire_grace=None,
            coalesce=False,
            max_instances=100,
            redeliver=redeliver,
        )
        agent = pool._store  # the test maps the runs' host ids to the processes it kills
        print(f"ready {agent.host if agent is not None else '-'}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        time.sleep(0)


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
