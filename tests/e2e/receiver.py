"""A small HTTP/1.1 server on 127.0.0.1 for the integrations tests: webhook receivers and external APIs.

It records every request (method, path, lowercased headers, raw body) and answers each from a
script of :class:`Answer` values (then from ``default``), so a test can make a receiver fail twice
and then succeed, redirect elsewhere, or stay silent. It runs on the test's event loop (asyncio
streams, no framework), which the module's mesh fixture shares: a test awaiting a gRPC call through
the edge keeps it serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Received", "Receiver", "until"]


@dataclass(frozen=True)
class Answer:
    """One response: a status, extra headers and a body; ``hang`` never answers (a dead-slow peer)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Answer:
        """A redirect to ``location``."""
        return cls(status, {"location": location}, b"")

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Answer:
        """A JSON body."""
        return cls(status, {"content-type": "application/json"}, json.dumps(value).encode())


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect"}


@dataclass
class Receiver:
    """An HTTP/1.1 endpoint on a free loopback port; ``url`` is set once started."""

    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    port: int = 0
    _server: asyncio.Server | None = None
    in_flight: int = 0
    """Requests read and not answered yet (a hanging answer stays in flight until the client leaves)."""
    max_in_flight: int = 0
    """The most requests in flight at once so far."""
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        """Listens on 127.0.0.1, on ``port`` when set, else on a free one."""
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        """Closes the listener and every connection held open (hung answers included)."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One request per connection: every answer says ``Connection: close``.
        counted = False
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader)
            else:
                body = await reader.readexactly(int(headers.get("content-length") or 0))
            self.requests.append(Received(method, path, headers, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            counted = True
            answer = self.script.pop(0) if self.script else self.default
            if answer.hang:
                # Answers nothing until the client gives up (closes) or the receiver stops.
                closing = asyncio.ensure_future(self._closing.wait())
                gone = asyncio.ensure_future(reader.read())
                await asyncio.wait({closing, gone}, return_when=asyncio.FIRST_COMPLETED)
                closing.cancel()
                gone.cancel()
                return
            reason = _REASONS.get(answer.status, "Status")
            out = {"content-length": str(len(answer.body)), "connection": "close", **answer.headers}
            writer.write(
                f"HTTP/1.1 {answer.status} {reason}\r\n".encode()
                + "".join(f"{k}: {v}\r\n" for k, v in out.items()).encode()
                + b"\r\n"
                + (answer.body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if counted:
                self.in_flight -= 1
            writer.close()

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)


async def until(probe: Any, check: Any = bool, timeout: float = 90.0, interval: float = 0.2) -> Any:
    """Polls ``probe()`` (awaited when it returns an awaitable) until ``check(value)``; returns it.

    Fails with the last value seen when ``timeout`` seconds pass first: generous, since the
    machine is shared, and never a measurement.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout:g} s; last seen: {value!r}")
        await asyncio.sleep(interval)
