"""The README's main command: `procman run examples/demo.toml` shows the product working."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from test_cli import READY, Procman, _env

ROOT = Path(__file__).parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_shows_health_a_restart_a_timed_job_and_a_clean_stop(tmp_path: Path) -> None:
    p = Procman(ROOT / "examples" / "demo.toml", tmp_path / "demo.sock", _env(DEMO_PORT=str(_free_port())))
    try:
        p.wait_line(READY, timeout=30)
        p.wait_line(r"health-prober +\| GET /health -> 200", timeout=15)
        p.wait_line(r"count-primes +\| run ok in .*13848", timeout=15)  # CPU work on the pool
        p.wait_line(r"queue-consumer +\| exited EXIT\(1\): ConnectionError", timeout=15)
        p.wait_line(r"queue-consumer +\| ready", count=2, timeout=15)  # restarted after its crash
        status: dict[str, Any] = p.status()
        consumer = next(d for d in status["daemons"] if d["name"] == "queue-consumer")
        assert consumer["restarts"] >= 1
        p.proc.send_signal(signal.SIGINT)
        assert p.wait_exit() == 0
        assert p.lines[-1].endswith("all stopped cleanly")
    finally:
        p.close()
