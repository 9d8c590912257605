"""The README's main command: the demo runs, shows a restart, and stops cleanly on SIGINT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_demo_shows_daemons_restart_and_clean_stop() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--seconds", "6"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "listening on http://127.0.0.1:" in out
    assert "GET /health -> 200" in out
    assert "[queue-consumer] exited" in out and "ConnectionError" in out
    assert out.count("[queue-consumer] ready") >= 2  # restarted after its crash
    assert "demo: count-primes run 1: 13848 primes" in out  # the timed job ran on the pool
    assert "demo: stopped cleanly" in out
