"""A host process sharing a store with others (tests/test_store.py starts, kills and restarts it).

    python store_host.py URL LOG START END INTERVAL [redeliver]

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


def main() -> None:
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
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        time.sleep(0)


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
