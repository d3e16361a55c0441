"""A raw socket upstream for tests of the upstream leg at the byte level: each connection runs a
script the test writes (answers exactly as given, 1xx answers, hang-ups), counted as they come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

BOUND_S = 5.0
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (by its Content-Length); b"" when the client closed instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class RawUpstream:
    """Runs ``script(reader, writer, n)`` for the n-th connection (from 1); counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def answer_each(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          answer: bytes, delay_s: float = 0.0) -> None:
        """Answer every request on the connection with ``answer`` (its head alone for HEAD)."""
        while request := await read_request(reader):
            self.requests.append(request)
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" if request.startswith(b"HEAD") else answer)
            await writer.drain()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def raw_upstreams() -> AsyncIterator[Callable[[Script], Awaitable[RawUpstream]]]:
    """Yields start(script) -> a RawUpstream listening on a free loopback port; all stop at the end."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> RawUpstream:
        upstream = RawUpstream(script)
        upstream.server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
        servers.append(upstream.server)
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BOUND_S):
                await server.wait_closed()


StartUpstream = Callable[[Script], Awaitable[RawUpstream]]
