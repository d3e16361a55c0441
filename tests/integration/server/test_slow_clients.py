"""Slow and stalled clients hold nothing for long (DESIGN "HTTP behaviour"): a body up to
listen.buffer_body is read whole before an upstream connection is taken, listen.body_timeout bounds
any silence of a client sending a body or reading a streamed answer. Real slow sockets, both upstream
clients, a handful of connections, a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from ..conftest import MakeProxy, StartUpstream
from ..rawupstream import OK, RawUpstream, read_request

pytestmark = pytest.mark.integration
BOUND_S = 10.0
SLOW = {"listen": {"body_timeout": "1s"}, "upstream": {"max_connections": 4, "timeout": "30s"}}


async def open_slow_post(port: int, length: int, sent: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that announces ``length`` bytes of body, sends ``sent`` of them and stops."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /slow HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {length}\r\n\r\n".encode() + b"x" * sent)
    await writer.drain()
    return reader, writer


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and JSON body of the answer a stalled client gets (the connection then closes)."""
    data = await reader.read()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def counting_upstream(raw_upstream: StartUpstream) -> RawUpstream:
    box: list[RawUpstream] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await box[0].answer_each(reader, writer, OK)

    box.append(await raw_upstream(script))
    return box[0]


async def test_slow_small_bodies_hold_no_upstream_connection(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                             forward_path: str) -> None:
    """The finding: four clients sending 10 bytes of a 1,000-byte body held all four upstream
    connections, and everyone else got 504. Bodies within buffer_body are read before the upstream is
    asked, so the others go through at once, and the stalled ones get 408 after body_timeout."""
    up = await counting_upstream(raw_upstream)
    proxy = await make_proxy(up.url, listen=SLOW["listen"], upstream=SLOW["upstream"])
    async with asyncio.timeout(BOUND_S):
        slow = [await open_slow_post(proxy.server.port, 1000, 10) for _ in range(4)]
        for _ in range(3):
            resp = await proxy.get("/other")
            assert resp.status == 200
        # The slow ones never reached the upstream (aiohttp's path opens a connection a request).
        assert up.connections == (1 if forward_path == "lean" else 3)
        for reader, writer in slow:
            status, body = await answer_of(reader)
            assert (status, body["code"]) == (408, "request_timeout")
            writer.close()
    assert [r.split(b" ", 2)[:2] for r in up.requests] == [[b"GET", b"/other"]] * 3


async def test_a_stalled_streamed_body_frees_its_upstream_connection_after_body_timeout(
        make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """A body over buffer_body is streamed; a client that stops sending it is cut after
    body_timeout, its upstream connection closes, and the next request gets that slot."""
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:   # the stalled client's: it must be closed by the gateway
            await reader.readuntil(b"\r\n\r\n")
            while await reader.read(65536):
                pass
            closed.set()
            return
        while await read_request(reader):
            writer.write(OK)
            await writer.drain()

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, listen={"body_timeout": "1s", "buffer_body": "100B"},
                             upstream={"max_connections": 1, "timeout": "30s"})
    async with asyncio.timeout(BOUND_S):
        reader, writer = await open_slow_post(proxy.server.port, 100_000, 1000)
        status, body = await answer_of(reader)
        assert (status, body["code"]) == (408, "request_timeout")
        await closed.wait()
        resp = await proxy.get("/next")   # the one slot came free
        assert resp.status == 200
        writer.close()


async def test_a_slow_but_steady_body_is_not_cut(make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """body_timeout bounds each silence, not the whole body."""
    up = await counting_upstream(raw_upstream)
    proxy = await make_proxy(up.url, listen={"body_timeout": "1s", "buffer_body": "100B"})
    async with asyncio.timeout(BOUND_S):
        reader, writer = await open_slow_post(proxy.server.port, 400, 0)
        for _ in range(4):
            await asyncio.sleep(0.4)   # the slow client under test: a pause shorter than body_timeout
            writer.write(b"y" * 100)
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(up.requests) == 1 and up.requests[0].endswith(b"\r\n\r\n" + b"y" * 400)


async def test_a_client_that_stops_reading_a_streamed_answer_frees_the_upstream(
        make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """The upstream sends 16 MiB; the client reads nothing. After body_timeout the gateway gives up
    on the client, and the upstream connection is closed (the one slot serves the next user)."""
    size = 16 * 1024 * 1024
    upstream_done = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            with contextlib.suppress(ConnectionError):
                for _ in range(size // 65536):
                    writer.write(b"z" * 65536)
                    await writer.drain()   # blocks once the gateway stops reading
            upstream_done.set()
            return
        writer.write(OK)
        await writer.drain()

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, listen={"body_timeout": "1s"}, upstream={"max_connections": 1, "timeout": "30s"})
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writer.transport.pause_reading()   # type: ignore[attr-defined]   # reads nothing at all
        writer.write(b"GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        await writer.drain()
        await upstream_done.wait()   # the gateway closed the upstream connection mid-body
        resp = await proxy.get("/next")
        assert resp.status == 200
        writer.close()
    assert up.connections == 2
