"""The upstream leg at the byte level: a raw socket upstream that answers exactly as each test
scripts it (1xx answers, bodies ended by a close, broken heads, pooled connections it closes),
behind the proxy app on both upstream clients (the lean one and aiohttp's)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from .conftest import MakeProxy
from .rawupstream import BOUND_S, OK, RawUpstream, Script, StartUpstream, read_request

pytestmark = pytest.mark.integration


async def proxy_for(make_proxy: MakeProxy, raw_upstream: StartUpstream, script: Script,
                    **upstream: object) -> tuple[TestClient, RawUpstream]:
    up = await raw_upstream(script)
    return await make_proxy(up.url, upstream=upstream or None), up


async def test_informational_answers_are_skipped(make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
        await read_request(reader)

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert (resp.status, await resp.read()) == (200, b"ok")
    assert "Link" not in resp.headers


async def test_a_body_that_runs_until_the_close_arrives_whole(make_proxy: MakeProxy,
                                                              raw_upstream: StartUpstream) -> None:
    body = b"line\n" * 20_000

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(0, len(body), 7000):
            writer.write(body[i:i + 7000])
            await writer.drain()

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        for _ in range(2):   # the connection is not reused: each request gets a new one
            resp = await proxy.get("/x")
            assert resp.status == 200 and await resp.read() == body
    assert up.connections == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok",                           # no status code
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",    # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Bad\x01: 1\r\nContent-Length: 2\r\n\r\nok",          # a control byte in a name
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 7000 + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
])
async def test_a_broken_answer_gives_502(make_proxy: MakeProxy, raw_upstream: StartUpstream, answer: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await read_request(reader)

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"


@pytest.mark.parametrize(("answer", "connections"), [
    (OK, 1),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 3),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
])
async def test_a_connection_is_reused_unless_the_answer_closes_it(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                                   answer: bytes, connections: int) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, answer)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        for _ in range(3):
            resp = await proxy.get("/x")
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert up.connections == connections


async def test_bytes_after_an_answer_retire_the_connection(make_proxy: MakeProxy,
                                                            raw_upstream: StartUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        for _ in range(3):
            resp = await proxy.get("/x")
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert up.connections == 3   # no answer was ever taken for another request's


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("DELETE", True), ("POST", False)])
async def test_a_pooled_connection_that_dies_is_retried_only_for_idempotent_requests(
        make_proxy: MakeProxy, raw_upstream: StartUpstream, method: str, retried: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:   # answers one request, then hangs up on the next without a byte
            await read_request(reader)
            writer.write(OK)
            await writer.drain()
            await read_request(reader)
            return
        await up.answer_each(reader, writer, OK)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        assert (await proxy.request(method, "/x")).status == 200
        resp = await proxy.request(method, "/x", data=b"body" if method == "POST" else None)
        assert resp.status == (200 if retried else 502)
    assert up.connections == (2 if retried else 1)


async def test_waiting_requests_take_turns_within_max_connections(make_proxy: MakeProxy,
                                                                 raw_upstream: StartUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, OK, delay_s=0.02)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script, max_connections=2)
    async with asyncio.timeout(BOUND_S):
        answers = await asyncio.gather(*(proxy.get(f"/x/{i}") for i in range(12)),
                                       *(proxy.head(f"/h/{i}") for i in range(3)))
    assert [r.status for r in answers] == [200] * 15
    assert len(up.requests) == 15 and up.most_open <= 2


async def test_a_large_answer_reaches_a_slow_reader_whole(make_proxy: MakeProxy,
                                                          raw_upstream: StartUpstream) -> None:
    body = bytes(range(256)) * 16 * 1024   # 4 MiB: streamed, and more than any buffer on the way

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S * 2):
        resp = await proxy.get("/x")
        got = bytearray()
        while chunk := await resp.content.read(256 * 1024):
            got += chunk
            await asyncio.sleep(0.005)
        assert got == body
        assert (await proxy.get("/again")).status == 200
    assert up.connections == 1   # read to its end, the connection went back to the pool


async def test_a_reader_that_stops_stops_the_upstream_too(make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """Flow control: what the client does not read stays with the upstream, not in the gateway."""
    size = 48 * 1024 * 1024
    writers: list[asyncio.StreamWriter] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writers.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
        await writer.drain()

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S * 3):
        resp = await proxy.get("/x")
        assert resp.status == 200
        await asyncio.sleep(0.5)   # the client reads nothing meanwhile
        unsent = writers[0].transport.get_write_buffer_size()
        assert unsent > size // 2   # socket buffers and the gateway's together hold less than half
        got = 0
        while chunk := await resp.content.read(1024 * 1024):
            got += len(chunk)
    assert got == size


async def test_a_body_that_breaks_off_never_reaches_the_upstream_whole(make_proxy: MakeProxy,
                                                                      raw_upstream: StartUpstream) -> None:
    part_arrived = asyncio.Event()
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        received = await reader.readuntil(b"\r\n\r\n")
        try:
            while chunk := await reader.read(65536):   # until the gateway closes the connection
                received += chunk
                part_arrived.set()
        finally:   # (an abort may come as a reset)
            got.set_result(received)

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await part_arrived.wait()
        writer.close()   # 60 bytes short
        received = await got
    assert b"Content-Length: 100\r\n" in received and received.endswith(b"\r\n\r\n" + b"x" * 40)
