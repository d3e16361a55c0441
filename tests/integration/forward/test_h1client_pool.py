"""h1client.UpstreamPool on its own over real sockets: the connection budget shared with aiohttp's
requests, idle connections closed, connections the upstream talks on out of turn closed, the connect
timeout, the request head guarded against CR/LF."""

from __future__ import annotations

import asyncio

import pytest

from gateway.forward.h1client import TimedOut, Unreachable, request_head
from gateway.forward.pool import UpstreamPool

from ..rawupstream import BOUND_S, OK, RawUpstream, StartUpstream, read_request, unanswering_listener

pytestmark = pytest.mark.integration
HEAD = request_head("GET", "/x", "upstream.test", [("X-Request-Id", "r1")])


def pool_for(up: RawUpstream, *, limit: int = 2, wait_s: float = 1.0, idle_s: float = 15.0) -> UpstreamPool:
    host, port = up.url.removeprefix("http://").split(":")
    return UpstreamPool(host, int(port), limit=limit, connect_timeout_s=1.0, wait_s=wait_s, idle_s=idle_s)


async def get(pool: UpstreamPool, timeout_s: float = 1.0) -> bytes:
    answer = await pool.send("GET", HEAD, None, timeout_s)
    try:
        return await answer.read()
    finally:
        answer.finish()


@pytest.fixture
async def answering(raw_upstream: StartUpstream) -> RawUpstream:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    return up


def test_request_head_is_the_request_line_and_headers() -> None:
    assert HEAD == b"GET /x HTTP/1.1\r\nHost: upstream.test\r\nX-Request-Id: r1\r\n\r\n"
    assert request_head("GET", "/", "h", [("X-Raw", "\udcff")]).endswith(b"X-Raw: \xff\r\n\r\n")   # bytes kept


@pytest.mark.parametrize(("target", "headers"), [
    ("/x\r\nX-Evil: 1", []), ("/x", [("X-A", "1\r\nX-Evil: 1")]), ("/x", [("X-A", "1\nX")]), ("/x", [("X-A\r", "1")]),
])
def test_request_head_refuses_a_cr_or_lf_inside_a_part(target: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        request_head("GET", target, "h", headers)


async def test_a_request_sent_by_aiohttp_takes_the_slot_of_an_idle_connection(answering: RawUpstream) -> None:
    pool = pool_for(answering, limit=1)
    async with asyncio.timeout(BOUND_S):
        assert await get(pool) == b"ok"
        assert pool.slots_used == 1              # the idle connection holds the only slot ...
        await pool.acquire_slot()                # ... and gives it up at once
        while answering.open:                    # (its socket closed)
            await asyncio.sleep(0.01)
        assert pool.slots_used == 1              # the slot is aiohttp's now: the close did not free it
        waiting = asyncio.create_task(get(pool))
        await asyncio.sleep(0)                   # one turn: it finds the budget spent and queues for a slot
        pool.release_slot()
        assert pool.slots_used == 1              # the slot went to the queued request, not back to the pool
        assert await waiting == b"ok"
    assert pool.slots_used == 1
    await pool.close()


async def test_a_request_that_finds_no_slot_in_time_gets_timed_out(answering: RawUpstream) -> None:
    pool = pool_for(answering, limit=1, wait_s=0.1)
    async with asyncio.timeout(BOUND_S):
        await pool.acquire_slot()
        with pytest.raises(TimedOut):
            await get(pool)
        pool.release_slot()
        assert await get(pool) == b"ok"          # nothing leaked: the slot is usable again
    await pool.close()


async def test_idle_connections_are_closed_after_idle_s(answering: RawUpstream) -> None:
    pool = pool_for(answering, idle_s=0.1)
    async with asyncio.timeout(BOUND_S):
        await asyncio.gather(get(pool), get(pool))
        assert answering.open == 2
        while answering.open:   # the reaper closes both
            await asyncio.sleep(0.01)
    assert pool.slots_used == 0
    await pool.close()


async def test_a_closed_pool_refuses_and_closes_its_idle_connections(answering: RawUpstream) -> None:
    pool = pool_for(answering)
    async with asyncio.timeout(BOUND_S):
        await get(pool)
        await pool.close()
        with pytest.raises(Unreachable):
            await get(pool)
        while answering.open:
            await asyncio.sleep(0.01)


async def test_a_cancelled_request_closes_its_connection(raw_upstream: StartUpstream) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await reader.read()   # until the gateway closes

    up = await raw_upstream(silent)
    pool = pool_for(up)
    async with asyncio.timeout(BOUND_S):
        call = asyncio.create_task(get(pool, timeout_s=30))
        while not up.open:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while up.open:
            await asyncio.sleep(0.01)
    assert pool.slots_used == 0
    await pool.close()


async def test_an_idle_connection_the_upstream_talks_on_is_closed_not_reused(raw_upstream: StartUpstream) -> None:
    """Bytes nobody asked for on a pooled connection: whatever comes next on it cannot be trusted."""
    idle = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(OK)
            await idle.wait()   # back in the pool
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
            await reader.read()   # until the pool closes it
            return
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    pool = pool_for(up)
    async with asyncio.timeout(BOUND_S):
        assert await get(pool) == b"ok"
        assert pool.slots_used == 1
        idle.set()
        while up.open:
            await asyncio.sleep(0.01)
        assert pool.slots_used == 0              # the pool let it go, slot and all
        assert await get(pool) == b"ok"          # on a new connection
    assert up.connections == 2
    await pool.close()


@pytest.mark.parametrize("extra", [
    b"\r\n",                                       # what the parser would skip between answers
    b"HTTP/1.1 204 No Content\r\n\r\n",             # a second answer, with nothing in it to hold back
])
async def test_bytes_after_a_whole_answer_in_a_later_read_close_the_connection(raw_upstream: StartUpstream,
                                                                               extra: bytes) -> None:
    """The answer was read whole and its exchange is not finished when more comes, in a read of its
    own: the connection closes; the answer already read stays good."""
    read_whole = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(OK)
            await read_whole.wait()
            writer.write(extra)
            await reader.read()   # until the gateway closes it
            return
        await up.answer_each(reader, writer, OK)

    up = await raw_upstream(script)
    pool = pool_for(up)
    async with asyncio.timeout(BOUND_S):
        answer = await pool.send("GET", HEAD, None, 1.0)
        try:
            assert (answer.status, await answer.read()) == (200, b"ok")
            read_whole.set()
            while up.open:
                await asyncio.sleep(0.01)
            assert answer.error is None
        finally:
            answer.finish()
        assert pool.slots_used == 0
        assert await get(pool) == b"ok"
    assert up.connections == 2
    await pool.close()


async def test_an_upstream_that_never_accepts_times_out_connecting() -> None:
    async with unanswering_listener() as url:
        host, port = url.removeprefix("http://").split(":")
        pool = UpstreamPool(host, int(port), limit=1, connect_timeout_s=0.2, wait_s=1.0)
        async with asyncio.timeout(BOUND_S):
            with pytest.raises(TimedOut):
                await get(pool)
            with pytest.raises(TimedOut):        # the slot came back: the second try connects too
                await get(pool)
        assert pool.slots_used == 0
        await pool.close()
