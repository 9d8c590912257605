"""The demo's code: an HTTP server on uvloop, a flaky queue consumer, a health prober, a CPU-heavy job.

``examples/demo.toml`` names these; ``procman run examples/demo.toml`` runs them. The port comes
from ``DEMO_PORT`` (default 8765) so that tests can pick a free one.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import urllib.request

import procman


def demo_port() -> int:
    return int(os.environ.get("DEMO_PORT", "8765"))


class HealthServer:
    """A tiny asyncio HTTP server (uvloop in its child) answering ``GET /health``."""

    name = "http-server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else demo_port()
        self._server: asyncio.Server | None = None
        self._requests = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        print(f"listening on http://127.0.0.1:{self.port}/health (pid {os.getpid()})", flush=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        self._requests += 1
        ok = request.startswith(b"GET /health ")
        body = b'{"status": "ok", "requests": %d}' % self._requests if ok else b'{"error": "not found"}'
        status = b"200 OK" if ok else b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        print(f"served {self._requests} requests; bye", flush=True)


class FlakyConsumer:
    """Consumes a (simulated) queue and crashes now and then, as real consumers do."""

    name = "queue-consumer"

    def __init__(self, crash_every: float = 2.5) -> None:
        self.crash_every = crash_every
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._consume, name="consume", daemon=True).start()
        print(f"consumer up (pid {os.getpid()})", flush=True)

    def _consume(self) -> None:
        started = time.monotonic()
        n = 0
        while not self._stop.wait(0.4):
            n += 1
            print(f"handled message {n}", flush=True)
            procman.heartbeat()
            if time.monotonic() - started > self.crash_every * random.uniform(0.8, 1.2):
                raise ConnectionError("broker connection reset (simulated crash)")

    def stop(self) -> None:
        self._stop.set()


class HealthProber:
    """Polls the HTTP daemon's health endpoint from its own process."""

    name = "health-prober"

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else demo_port()
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._probe, name="probe", daemon=True).start()

    def _probe(self) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    print(f"GET /health -> {resp.status} {resp.read().decode()}", flush=True)
            except OSError as exc:
                print(f"GET /health failed: {exc}", flush=True)

    def stop(self) -> None:
        self._stop.set()


def count_primes(limit: int) -> tuple[int, int, float]:
    """A CPU-heavy timed job: count the primes below ``limit`` by trial division, in pure Python."""
    started = time.perf_counter()
    count = sum(1 for n in range(2, limit) if all(n % d for d in range(2, int(n**0.5) + 1)))
    return os.getpid(), count, time.perf_counter() - started
