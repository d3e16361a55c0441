"""A raw socket upstream for tests of the upstream leg at the byte level: each connection runs a
script the test writes (answers exactly as given, 1xx answers, hang-ups), counted as they come."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
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


# --- what the kernel knows: a listener that never answers, how much a peer in this process has read ---

@contextlib.asynccontextmanager
async def unanswering_listener() -> AsyncIterator[str]:
    """Yields the URL of a loopback port that listens but never completes a handshake: a backlog of 0,
    never accepted, its accept queue filled by one connection first. Linux drops the SYNs of any
    later connect (the queue is full; net.ipv4.tcp_abort_on_overflow is 0, the default), so a
    client's connect hangs as it does for a blackholed host."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.setblocking(False)
        await asyncio.get_running_loop().sock_connect(filler, listener.getsockname())   # now queued
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        filler.close()
        listener.close()


def peer_counts(writer: asyncio.StreamWriter) -> tuple[int, int] | None:
    """(bytes read, bytes waiting to be read) at the other end of ``writer``'s connection, when that
    end is a socket of this process (the gateway under test), from the kernel: Linux TCP_INFO's
    tcpi_bytes_received less FIONREAD, on a duplicate of its descriptor closed at once (a duplicate
    kept would keep the connection open). None when no socket of this process is that end (closed)."""
    mine = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                if sock.type != socket.SOCK_STREAM or (sock.getpeername(), sock.getsockname()) != mine:
                    continue
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                waiting = array.array("i", [0])
                fcntl.ioctl(sock, termios.FIONREAD, waiting)
        except OSError:   # gone meanwhile, not a TCP socket, not connected
            continue
        return struct.unpack_from("Q", info, 128)[0] - waiting[0], waiting[0]
    return None


async def until_peer_read(writer: asyncio.StreamWriter, count: int, limit_s: float = BOUND_S) -> bool:
    """Poll until the other end of ``writer``'s connection (in this process) has read ``count``
    bytes: True; False once it closed instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while (counts := peer_counts(writer)) is not None:
        if counts[0] >= count:
            return True
        assert loop.time() < deadline, f"the peer read {counts[0]} bytes of {count}"
        await asyncio.sleep(0)   # a reading transport reads on the loop's next turn
    return False


async def until_peer_stops_reading(writer: asyncio.StreamWriter, limit_s: float = BOUND_S) -> int:
    """Poll until the other end of ``writer``'s connection (a socket of this process's event loop)
    has stopped reading: bytes wait there and two turns of the loop later none of them was read (a
    transport that reads is called on the first turn its socket is readable, after this task).
    Returns how much it had read by then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    read = 0
    while True:
        before = peer_counts(writer)
        assert before is not None, f"it never stopped reading: it closed the connection after {read} bytes"
        read = before[0]
        for _ in range(3):
            await asyncio.sleep(0)
        after = peer_counts(writer)
        if before[1] and after is not None and after[0] == read:
            return read
        assert loop.time() < deadline, f"it never stopped reading (read {read} bytes)"
        await asyncio.sleep(0.01)
