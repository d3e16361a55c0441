"""The upstream leg at the byte level: a raw socket upstream that answers exactly as each test
scripts it (1xx answers, bodies ended by a close, broken heads, pooled connections it closes),
behind the proxy app on both upstream clients (the lean one and aiohttp's)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.forward.h1client import MAX_FIELD_BYTES, MAX_HEAD_BYTES, MAX_HEADERS

from ..conftest import FORWARDER, MakeProxy
from ..rawupstream import (BOUND_S, OK, RawUpstream, Script, StartUpstream, read_request, unanswering_listener,
                          until_peer_read, until_peer_stops_reading)

pytestmark = pytest.mark.integration
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 1.3


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


@pytest.mark.parametrize("status", [200, 205, 305])   # (only 204 and 304 never have a body, RFC 9112 6.3)
async def test_a_body_that_runs_until_the_close_arrives_whole(make_proxy: MakeProxy,
                                                              raw_upstream: StartUpstream, status: int) -> None:
    body = b"line\n" * 20_000

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 %d Other\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n" % status)
        for i in range(0, len(body), 7000):
            writer.write(body[i:i + 7000])
            await writer.drain()

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        for _ in range(2):   # the connection is not reused: each request gets a new one
            resp = await proxy.get("/x")
            assert resp.status == status and await resp.read() == body
    assert up.connections == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok",                           # no status code
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",    # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Bad\x01: 1\r\nContent-Length: 2\r\n\r\nok",          # a control byte in a name
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 7000 + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    # A coding other than one chunked: neither client undoes it, and it would reach the client as plain.
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nokok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
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


@pytest.mark.parametrize("start", [
    b"HTTP/1.1 200 OK\r\nX-Big: ",   # a header value,
    b"HTTP/1.1 200 OK\r\nX-",        # a header name,
    b"HTTP/1.1 200 ",                 # the reason phrase: each never ends
])
async def test_a_head_that_grows_too_large_over_several_reads_gives_502(make_proxy: MakeProxy,
                                                                       raw_upstream: StartUpstream,
                                                                       start: bytes) -> None:
    """No single read is too large: the head is bounded across reads (h1client counts what it fed
    the parser before the head was whole). Each 4 KiB piece is written once the gateway has read the
    last one, so each comes in a read of its own."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(start)
        sent = len(start)
        while sent < 256 * 1024 and await until_peer_read(writer, sent):   # False: the gateway hung up
            writer.write(b"a" * 4096)
            sent += 4096
        await reader.read()   # until the gateway closes

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script, timeout="1s")   # (silence: 504)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"


def head_of(total: int, count: int = 0) -> bytes:
    """An answer head whose header lines add up to ``total`` bytes as h1client counts them (name and
    value and 4: ": " and CRLF), or, with ``count``, that has ``count`` small headers; Content-Length: 2
    is one of them."""
    lines = [b"Content-Length: 2"]
    if count:
        lines += [b"X-F%03d: v" % i for i in range(count - 1)]
    left, i = total - 19 if total else 0, 0
    while left:
        size = min(left, 8000)
        if 0 < left - size < 10:   # (the last line needs room for its name)
            size -= 10
        lines.append(b"X-F%02d: " % i + b"v" * (size - 9))
        left, i = left - size, i + 1
    return b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@pytest.mark.parametrize(("head", "status"), [
    (head_of(MAX_HEAD_BYTES), 200), (head_of(MAX_HEAD_BYTES + 1), 502),   # each line well within its limit
    (head_of(100 * 1000), 502),
    (head_of(0, count=MAX_HEADERS), 200), (head_of(0, count=MAX_HEADERS + 1), 502),
], ids=["max_head_bytes", "one_byte_more", "100k", "max_headers", "one_header_more"])
async def test_a_head_is_bounded_by_what_its_headers_add_up_to_and_their_count(
        make_proxy: MakeProxy, raw_upstream: StartUpstream, forward_path: str, head: bytes, status: int) -> None:
    """h1client.MAX_HEAD_BYTES bounds the header lines together, MAX_HEADERS their count, however
    the reads fall: here the first MAX_HEAD_BYTES bytes come in reads of their own (the head still
    incomplete after them), the rest after."""
    if forward_path == "aiohttp" and b"\r\nX-F00: " in head:
        status = 200   # aiohttp's parser bounds each line and the count of headers, not the head's size

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(head[:MAX_HEAD_BYTES])
        if len(head) > MAX_HEAD_BYTES and not await until_peer_read(writer, MAX_HEAD_BYTES):
            return   # the gateway hung up
        writer.write(head[MAX_HEAD_BYTES:] + b"ok")
        await reader.read()

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):   # a raw client: aiohttp's takes no more than 128 headers either
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port, limit=len(head) * 2)
        try:
            writer.write(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 %d " % status)
            if status == 200:
                assert await reader.readexactly(2) == b"ok"
        finally:
            writer.close()


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 502)])
async def test_a_header_line_of_exactly_the_limit_passes_and_one_byte_more_gives_502(
        make_proxy: MakeProxy, raw_upstream: StartUpstream, forward_path: str, extra: int, status: int) -> None:
    """h1client.MAX_FIELD_BYTES (8190) counts a header's name and value and 4 bytes (": " and CRLF)."""
    if forward_path == "aiohttp":
        status = 200   # aiohttp's parser bounds a value alone at 8190 bytes: both heads pass there
    value = b"v" * (MAX_FIELD_BYTES - len(b"X-Big") - 4 + extra)
    answer = b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    proxy, _ = await proxy_for(make_proxy, raw_upstream, lambda r, w, n: _answer_once(r, w, answer))
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == status
        if status == 200:
            assert resp.headers["X-Big"] == value.decode()


async def _answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
    await read_request(reader)
    writer.write(answer)
    await writer.drain()
    await reader.read()


@pytest.mark.parametrize(("answer", "connections"), [
    (OK, 1),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 3),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
])
async def test_a_connection_is_reused_unless_the_answer_closes_it(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                                   answer: bytes, connections: int,
                                                                   forward_path: str) -> None:
    if forward_path == "aiohttp":
        connections = 3   # that path keeps no connection for the next request (general.open_session)
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


async def test_an_idle_connection_the_upstream_talks_on_is_never_reused(make_proxy: MakeProxy,
                                                                      raw_upstream: StartUpstream,
                                                                      forward_path: str) -> None:
    """Bytes nobody asked for, sent once the connection went back to the pool and read by the
    gateway before the next request: that request never gets them for its answer. (aiohttp's pool
    handed them on as the next answer, aio-libs/aiohttp#13656: its path closes each connection now.)"""
    idle, heard = asyncio.Event(), asyncio.Event()
    unasked = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(OK)
            await idle.wait()
            writer.write(unasked)
            await until_peer_read(writer, len(OK) + len(unasked))   # (or the gateway closed it first)
            heard.set()
        await up.answer_each(reader, writer, OK)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert (resp.status, await resp.read()) == (200, b"ok")   # the connection is idle in the pool now
        idle.set()
        await heard.wait()
        again = await proxy.get("/again")
        assert (again.status, await again.read()) == (200, b"ok")
    assert up.connections == 2


async def test_an_upstream_that_never_accepts_gives_504(make_proxy: MakeProxy) -> None:
    async with unanswering_listener() as url:
        proxy = await make_proxy(url, upstream={"connect_timeout": "200ms"})
        async with asyncio.timeout(BOUND_S):
            resp = await proxy.get("/x")
            assert resp.status == 504 and (await resp.json())["code"] == "upstream_timeout"


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("DELETE", True), ("POST", False)])
async def test_a_pooled_connection_that_dies_is_retried_only_for_idempotent_requests(
        make_proxy: MakeProxy, raw_upstream: StartUpstream, method: str, retried: bool, forward_path: str) -> None:
    if forward_path == "aiohttp":
        retried = True   # that path pools nothing: the second request goes on a new connection anyway

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


async def test_a_pooled_connection_that_dies_inside_an_answer_is_never_retried(make_proxy: MakeProxy,
                                                                               raw_upstream: StartUpstream,
                                                                               forward_path: str) -> None:
    """Part of an answer came before the close: the upstream has taken the request, so the lean path
    does not send even a GET again (502). (aiohttp's client sends an idempotent request once more on a
    new connection, as RFC 9110 9.2.2 allows: its path gets the second answer.)"""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while request := await read_request(reader):
            up.requests.append(request)
            if len(up.requests) == 2:   # the second request: half a head, then the close
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
                await writer.drain()
                return
            writer.write(OK)
            await writer.drain()

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        assert (await proxy.get("/first")).status == 200
        resp = await proxy.get("/second")
        if forward_path == "lean":
            assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
        else:
            assert resp.status == 200
    sent = [b"/first", b"/second"] + ([] if forward_path == "lean" else [b"/second"])
    assert [r.split(b" ")[1] for r in up.requests] == sent


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


async def test_a_large_answer_reaches_a_slow_reader_whole(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                          forward_path: str) -> None:
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
    # Read to its end, the connection went back to the pool (aiohttp's path closes each one).
    assert up.connections == (1 if forward_path == "lean" else 2)


def big_answer(size: int, writers: list[asyncio.StreamWriter]) -> Script:
    """An upstream script answering ``size`` zero bytes at once; each connection's writer goes to ``writers``."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writers.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
        await writer.drain()

    return script


async def test_a_reader_that_stops_stops_the_upstream_too(make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """Flow control: what the client does not read stays with the upstream, not in the gateway. The
    count is the kernel's: what the gateway has read from its socket to the upstream once it stopped
    reading it (polled); without flow control it never stops before it has read everything."""
    size = 48 * 1024 * 1024
    writers: list[asyncio.StreamWriter] = []
    script = big_answer(size, writers)

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S * 3):
        resp = await proxy.get("/x")
        assert resp.status == 200
        taken = await until_peer_stops_reading(writers[0])   # the client reads nothing meanwhile
        assert taken < size // 2   # the gateway and the sockets to the client together hold less than half
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

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, listen={"buffer_body": "10B"})   # a body over 10 bytes is streamed
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await part_arrived.wait()
        writer.close()   # 60 bytes short
        received = await got
    assert b"Content-Length: 100\r\n" in received and received.endswith(b"\r\n\r\n" + b"x" * 40)


async def test_a_buffered_body_that_breaks_off_never_reaches_the_upstream(make_proxy: MakeProxy,
                                                                          raw_upstream: StartUpstream) -> None:
    proxy, up = await proxy_for(make_proxy, raw_upstream, lambda r, w, n: up.answer_each(r, w, OK))
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        writer.close()   # 60 bytes short: within listen.buffer_body, so read whole first
        await writer.wait_closed()
        again = await proxy.post("/after", data=b"y" * 10)   # the proxy still works, and has seen the close
        assert again.status == 200
    assert up.connections == 1 and len(up.requests) == 1 and up.requests[0].startswith(b"POST /after ")


# --- a request body still on its way, and the upstream's silence (forward/h1client.py Answer) -------------------

async def dribble_post(port: int, pieces: int, gap_s: float) -> bytes:
    """POST /upload with a Content-Length body of ``pieces`` pieces of 10 bytes, ``gap_s`` apart (time
    is the input here: a client that sends its body slowly); returns the answer's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (10 * pieces))
        for i in range(pieces):
            await asyncio.sleep(gap_s)
            writer.write(b"%010d" % i)
            await writer.drain()
        return (await reader.readuntil(b"\r\n")).rstrip()
    finally:
        writer.close()


SLOW_BODY = b"".join(b"%010d" % i for i in range(6))   # dribble_post(..., 6, 0.15): 0.9 s, the timeout 0.3 s


async def test_a_body_sent_slower_than_the_upstream_timeout_is_not_the_upstreams_silence(
        make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """The upstream timeout counts the upstream's silence once it has the whole request, never the
    time a client takes to send its (streamed) body."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, upstream={"timeout": "300ms"}, listen={"buffer_body": "10B"})
    async with asyncio.timeout(BOUND_S):
        assert await dribble_post(proxy.server.port, 6, 0.15) == b"HTTP/1.1 200 OK"
    assert len(up.requests) == 1 and up.requests[0].endswith(b"\r\n\r\n" + SLOW_BODY)


async def test_an_upstream_silent_after_a_slowly_sent_body_gives_504(make_proxy: MakeProxy,
                                                                    raw_upstream: StartUpstream) -> None:
    """The timeout still starts once the body is sent: an upstream that then says nothing is cut off."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        up.requests.append(await read_request(reader))
        await reader.read()   # silent until the gateway gives up and closes the connection

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, upstream={"timeout": "300ms"}, listen={"buffer_body": "10B"})
    async with asyncio.timeout(BOUND_S):
        assert await dribble_post(proxy.server.port, 6, 0.15) == b"HTTP/1.1 504 Gateway Timeout"
    assert len(up.requests) == 1 and up.requests[0].endswith(b"\r\n\r\n" + SLOW_BODY)


async def test_a_reader_that_pauses_past_the_upstream_timeout_still_gets_the_whole_answer(
        make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """While the gateway holds off the upstream for a client that reads nothing, the upstream is not
    silent: the answer is not cut off, however long the client takes (within listen.body_timeout)."""
    size = 16 * 1024 * 1024
    writers: list[asyncio.StreamWriter] = []
    script = big_answer(size, writers)

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script, timeout="300ms")
    async with asyncio.timeout(BOUND_S * 3):
        resp = await proxy.get("/x")
        assert resp.status == 200
        await until_peer_stops_reading(writers[0])   # the gateway holds the upstream off now
        await asyncio.sleep(0.6)   # time is the input: twice the upstream timeout without reading
        got = 0
        while chunk := await resp.content.read(1024 * 1024):
            got += len(chunk)
    assert got == size


async def test_an_upstream_that_falls_silent_after_the_reader_caught_up_is_cut_off(
        make_proxy: MakeProxy, raw_upstream: StartUpstream) -> None:
    """Once a paused read has resumed, the upstream's silence counts again: a streamed answer the
    upstream stops sending mid-body is cut off after the upstream timeout, never left hanging."""
    size = 16 * 1024 * 1024
    writers: list[asyncio.StreamWriter] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writers.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (size + 10) + bytes(size))
        await writer.drain()
        await reader.read()   # the last 10 bytes never come: silent until the gateway closes

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script, timeout="300ms")
    async with asyncio.timeout(BOUND_S * 3):
        resp = await proxy.get("/x")
        assert resp.status == 200
        await until_peer_stops_reading(writers[0])   # paused: it resumes as the client reads below
        got = 0
        with pytest.raises(aiohttp.ClientPayloadError):
            while chunk := await resp.content.read(1024 * 1024):
                got += len(chunk)
    assert got <= size


async def test_a_small_answer_whose_body_comes_in_several_reads_arrives_whole(make_proxy: MakeProxy,
                                                                              raw_upstream: StartUpstream) -> None:
    """A body read whole (small) never pauses the upstream: each part of it is read as it comes."""
    parts = [b"first-", b"second-", b"third"]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        sent = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(b"".join(parts))
        writer.write(sent)
        for part in parts:
            writer.write(part)
            sent += part
            await writer.drain()
            await until_peer_read(writer, len(sent))   # one read per part at the gateway
        await reader.read()

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert (resp.status, await resp.read()) == (200, b"".join(parts))


async def test_an_answer_that_comes_before_the_body_ends_retires_the_connection(make_proxy: MakeProxy,
                                                                                raw_upstream: StartUpstream) -> None:
    """An upstream may answer before the request body is whole; the rest of that body is then never
    sent, so the connection can never carry another request: the upstream would read that request as
    the rest of the body (a desynchronised connection)."""
    rest: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:   # answers after the head alone, then records what else comes until the close
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
            received = b""
            try:
                while chunk := await reader.read(65536):
                    received += chunk
            finally:   # (an abort may come as a reset)
                rest.set_result(received)
            return
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, listen={"buffer_body": "10B"})   # a body over 10 bytes is streamed
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        try:
            writer.write(b"POST /early HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")   # 60 bytes still to come
            again = await proxy.get("/again")
            assert (again.status, await again.read()) == (200, b"ok")
        finally:
            writer.close()
        after_answer = await rest
    assert up.connections == 2 and after_answer == b"x" * len(after_answer)   # part of the body, nothing else
    assert len(up.requests) == 1 and up.requests[0].startswith(b"GET /again ")


async def test_an_answer_running_until_the_close_is_cut_off_when_the_clients_body_stalls(
        make_proxy: MakeProxy, raw_upstream: StartUpstream, forward_path: str) -> None:
    """The upstream answers before the body is whole, with a body that runs until the close; the client
    then stops sending (listen.body_timeout). The gateway gives up on the exchange: what the client got
    so far must not end as if the answer were whole (no last chunk), since the upstream never ended it."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
        await writer.drain()
        await reader.read()   # more to come, until the gateway closes the connection

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, upstream={"timeout": "1s"}, listen={"buffer_body": "10B", "body_timeout": "300ms"})
    async with asyncio.timeout(BOUND_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        try:
            writer.write(b"POST /x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            received = await reader.readuntil(b"\r\n\r\n")
            assert received.startswith(b"HTTP/1.1 200 ") and b"chunked" in received.lower()
            while not received.endswith(b"\r\n0\r\n\r\n") and (chunk := await reader.read(65536)):
                received += chunk   # until the gateway closes, or (wrongly) ends the answer
        finally:
            writer.close()
    assert b"partial" in received and not received.endswith(b"\r\n0\r\n\r\n")


async def test_a_connection_is_reused_after_a_streamed_body(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                            forward_path: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    proxy = await make_proxy(up.url, listen={"buffer_body": "10B"})   # a body over 10 bytes is streamed
    async with asyncio.timeout(BOUND_S):
        for i in range(3):
            resp = await proxy.post(f"/up/{i}", data=b"y" * 100)
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert [r[-100:] for r in up.requests] == [b"y" * 100] * 3
    # The whole body was sent: the lean path keeps the connection (aiohttp's path closes each one).
    assert up.connections == (1 if forward_path == "lean" else 3)


async def test_a_retired_forwarder_closes_once_its_requests_in_flight_have_ended(make_proxy: MakeProxy,
                                                                              raw_upstream: StartUpstream) -> None:
    """A reload retires the Forwarder (pipeline.py): what it started finishes on it, one request
    waiting for its answer and one still sending its body, and only then do its connections close."""
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while request := await read_request(reader):
            up.requests.append(request)
            if request.startswith(b"GET /slow "):
                await release.wait()
            writer.write(OK)

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        slow = asyncio.create_task(proxy.get("/slow"))
        while not up.requests:   # at the upstream, its answer held back
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            continued = await reader.readuntil(b"\r\n\r\n")   # in the Forwarder, waiting for its body
            assert continued.startswith(b"HTTP/1.1 100 ")
            retiring = asyncio.create_task(proxy.server.app[FORWARDER].retire())
            release.set()
            resp = await slow
            assert (resp.status, await resp.read()) == (200, b"ok")
            assert not retiring.done()   # the upload is still in flight
            writer.write(b"body")
            while (head := await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 1"):
                pass
            assert head.startswith(b"HTTP/1.1 200 ") and await reader.readexactly(2) == b"ok"
        finally:
            writer.close()
        assert up.requests[-1].startswith(b"POST /upload ") and up.requests[-1].endswith(b"\r\n\r\nbody")
        await retiring
        while up.open:   # and then it closed its connections to the upstream
            await asyncio.sleep(0.01)


# --- what a well-formed answer head is (forward/answer_head.py), on both upstream clients --------------------

async def answer_then_ok(up_box: list[RawUpstream], answer: bytes, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, n: int) -> None:
    """The first connection gets ``answer`` and then OK to anything more it is asked; the later ones
    OK: a second request that came back 200 on one connection would mean the broken one was reused."""
    if n == 1:
        up_box[0].requests.append(await read_request(reader))
        writer.write(answer)
        await writer.drain()
    await up_box[0].answer_each(reader, writer, OK)


async def assert_502_and_not_reused(make_proxy: MakeProxy, raw_upstream: StartUpstream, answer: bytes) -> None:
    box: list[RawUpstream] = []
    proxy, up = await proxy_for(make_proxy, raw_upstream, lambda r, w, n: answer_then_ok(box, answer, r, w, n))
    box.append(up)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
        # The refusal names the request id the upstream was given (picked once, for both).
        (given,) = [line.partition(b":")[2].strip().decode() for line in up.requests[0].split(b"\r\n")
                    if line.lower().startswith(b"x-request-id:")]
        assert resp.headers["X-Request-Id"] == given
        again = await proxy.get("/again")
        assert (again.status, await again.read()) == (200, b"ok")
    assert up.connections == 2


@pytest.mark.parametrize("status_line", [
    b"HTTP/1.1 099 Low", b"HTTP/1.1 000 Zero", b"HTTP/1.1 600 High", b"HTTP/1.1 999 High",
    b"HTTP/1.1 0200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 -20 OK", b"HTTP/1.1 +20 OK",
    b"HTTP/2.0 200 OK", b"HTTP/0.9 200 OK",   # not an HTTP/1 answer
])
async def test_a_status_code_outside_100_to_599_gives_502(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                          status_line: bytes) -> None:
    await assert_502_and_not_reused(make_proxy, raw_upstream, status_line + b"\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 O\x01K",                         # control characters in the reason phrase
    b"HTTP/1.1 200 O\x00K",
    b"HTTP/1.1 200 O\x7fK",
    b"HTTP/1.1 200 O\x1bK",
    b"HTTP/1.1 404 Not\x0bFound",
    b"HTTP/1.1 200 O\rK",                           # a bare CR, a bare LF
    b"HTTP/1.1 200 O\nK",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b",              # ... in a header value
    b"HTTP/1.1 200 OK\r\nX-A: a\x01b",
    b"HTTP/1.1 200 OK\r\nX-A: a\x0bb",
    b"HTTP/1.1 200 OK\r\nX-A: a\x1fb",
    b"HTTP/1.1 200 OK\r\nX-A: a\x7fb",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb",
    b"HTTP/1.1 200 OK\r\nX-A: \x01",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\x01; Path=/",
    b"HTTP/1.1 200 OK\r\nX-\x00A: a",               # ... in a header name
    b"HTTP/1.1 200 OK\r\nX-\x7fA: a",
    b"HTTP/1.1 200 OK\r\nX-A\r: a",
])
async def test_a_control_character_in_the_answers_head_gives_502(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                                 head: bytes) -> None:
    await assert_502_and_not_reused(make_proxy, raw_upstream, head + b"\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("size", [2, 600_000])   # read whole, streamed
async def test_a_control_character_gives_502_whatever_the_body(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                               size: int) -> None:
    await assert_502_and_not_reused(make_proxy, raw_upstream,
                                    b"HTTP/1.1 200 OK\r\nX-A: \x01\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))


@pytest.mark.parametrize(("head", "status", "reason", "header"), [
    (b"HTTP/1.1 599 Edge", 599, "Edge", None),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", 200, "OK", None),
    (b"HTTP/1.1 200 ", 200, "", None),              # an empty reason
    (b"HTTP/1.1 200", 200, "", None),               # no reason at all (RFC 9112 4: a client accepts it)
    (b"HTTP/1.1 200 O\tK", 200, "O\tK", None),      # HTAB is allowed in a reason (RFC 9112 4)
    (b"HTTP/1.1 200 OK\r\nX-A: a\tb c", 200, "OK", "a\tb c"),   # ... and inside a value (RFC 9110 5.5)
])
async def test_a_well_formed_head_is_relayed_as_it_came(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                        head: bytes, status: int, reason: str,
                                                        header: str | None) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, head + b"\r\nContent-Length: 2\r\n\r\nok")

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert (resp.status, resp.reason, await resp.read()) == (status, reason, b"ok")
        if header is not None:
            assert resp.headers["X-A"] == header
    assert up.connections == 1


async def test_a_folded_header_never_reaches_the_client_folded(make_proxy: MakeProxy, raw_upstream: StartUpstream,
                                                               forward_path: str) -> None:
    """RFC 9112 5.2: a proxy answers 502 to obs-fold or replaces it with SP. llhttp (lean) refuses it;
    aiohttp's parser unfolds it."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok")

    proxy, up = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        if forward_path == "lean":
            assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
        else:
            assert (resp.status, resp.headers["X-A"], await resp.read()) == (200, "a b", b"ok")


async def test_a_websocket_handshake_with_a_control_character_gives_502(make_proxy: MakeProxy,
                                                                       raw_upstream: StartUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        request = await read_request(reader)
        key = re.search(rb"(?im)^Sec-WebSocket-Key: *(\S+)", request).group(1)   # type: ignore[union-attr]
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nX-A: a\x01b\r\n\r\n")
        await writer.drain()

    proxy, _ = await proxy_for(make_proxy, raw_upstream, script)
    async with asyncio.timeout(BOUND_S):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await proxy.ws_connect("/ws")
    assert refused.value.status == 502
