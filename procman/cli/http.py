"""``[procman] metrics``: a small read-only HTTP endpoint, ``GET /metrics`` and ``GET /status.json``.

Read-only by design: nothing can be started, stopped or changed over HTTP (that is the control
socket's, which only its owner may reach). It listens on 127.0.0.1 unless the file names another
address. Each connection answers one request and closes; a client that sends nothing for
``IDLE`` seconds, or a request head over ``MAX_HEAD`` bytes, is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .control import ControlError, close_server

IDLE = 10.0
MAX_HEAD = 16 * 1024
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], Awaitable[str]],
        status: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.host, self.port = host, port
        self.metrics, self.status = metrics, status
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ControlError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}; choose another "
                "[procman] metrics address, or remove the key"
            ) from None
        if self.port == 0:  # a test's: the port the system chose
            sock = self._server.sockets[0]
            self.port = sock.getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        await close_server(server, self._clients)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            except asyncio.LimitOverrunError:
                await self._reply(writer, 431, "text/plain", b"request head too large\n")
                return
            if len(head) > MAX_HEAD:
                await self._reply(writer, 431, "text/plain", b"request head too large\n")
                return
            request_line, *headers = head.decode("latin-1").split("\r\n")
            parts = request_line.split()
            if len(parts) != 3:
                await self._reply(writer, 400, "text/plain", b"bad request\n")
                return
            method, target, _version = parts
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, "text/plain", b"read-only: GET /metrics or /status.json\n")
                return
            accept = next((h.split(":", 1)[1] for h in headers if h.lower().startswith("accept:")), "")
            if path == "/metrics":
                text = await self.metrics()
                # Prometheus asks for OpenMetrics; a plain client (curl) gets the same text as text/plain
                kind = OPENMETRICS if "openmetrics" in accept else PROMETHEUS_TEXT
                await self._reply(writer, 200, kind, text.encode(), head_only=method == "HEAD")
            elif path == "/status.json":
                body = orjson.dumps(await self.status(), default=str, option=orjson.OPT_INDENT_2)
                await self._reply(writer, 200, "application/json", body + b"\n", head_only=method == "HEAD")
            else:
                await self._reply(writer, 404, "text/plain", b"not found: GET /metrics or /status.json\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, code: int, kind: str, body: bytes, *, head_only: bool = False
    ) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        reason = reasons.get(code, "Request Header Fields Too Large")
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nCache-Control: no-store\r\n\r\n"
        )
        writer.write(head.encode() + (b"" if head_only else body))
        await writer.drain()
