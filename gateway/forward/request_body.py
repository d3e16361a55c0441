"""Step 6, the request body: read whole before an upstream connection is taken when it is small
(``listen.buffer_body``), else streamed as it comes; a client silent for longer than
``listen.body_timeout`` while sending it gets 408 (RequestTimeout), and its upstream exchange ends.

In: the request, after it was authorised. Out: a ``Body`` whose ``length`` is the only
Content-Length the upstream sees (headers.request_header_items writes it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import HttpVersion11, web
from aiohttp.streams import StreamReader

from ..errors import ExpectationFailed, RequestTimeout

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Body:
    """What the upstream gets after the head: ``data`` (read whole) or ``stream`` (or neither).

    ``length`` is None when there is no body, or when a chunked body longer than the buffer is
    streamed (its upstream client frames it as chunked). ``stalled``: the stream ended because the
    client fell silent (the caller answers 408, not 502). ``on_stall``: called then, for an upstream
    client whose answer may already be streaming while the body is still being sent."""

    length: int | None = None
    data: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    stalled: bool = False
    on_stall: Callable[[], object] | None = None


def check_expectation(request: web.BaseRequest) -> None:
    """RFC 9110 10.1.1: the only expectation understood is 100-continue; any other gets 417."""
    if request.version == HttpVersion11 and request.headers["Expect"].lower() != "100-continue":
        raise ExpectationFailed()


async def send_continue(request: web.BaseRequest) -> None:
    """Tell a client waiting with ``Expect: 100-continue`` to send its body. Called only once the
    request is going to be forwarded: a refused client never uploads a body for nothing."""
    if request.version == HttpVersion11 and "Expect" in request.headers and not request.content.is_eof():
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0   # the answer proper has not started


async def read_body(request: web.BaseRequest, buffer_bytes: int, timeout_s: float) -> Body:
    """The body of a request that has one (``request.body_exists``; without one the caller's Body is
    ``Body(request.content_length)``): whole when it has at most ``buffer_bytes`` (a chunked one too:
    it then goes on with a Content-Length), else a stream. Raises RequestTimeout."""
    content = request.content
    declared = request.content_length
    if declared is not None and declared > buffer_bytes:
        body = Body(declared)
        body.stream = _timed(content, timeout_s, b"", body)
        return body
    data = await _read_up_to(content, buffer_bytes, timeout_s)
    if content.at_eof():
        return Body(len(data), data)
    body = Body()   # chunked and longer than the buffer: what was read goes first
    body.stream = _timed(content, timeout_s, data, body)
    return body


async def _read_up_to(content: StreamReader, limit: int, timeout_s: float) -> bytes:
    """The body until its end, or until more than ``limit`` bytes came; any silence longer than
    ``timeout_s`` raises RequestTimeout."""
    if content.is_eof():   # the common case: the whole body came with the head
        return content.read_nowait(-1)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s) as silence:
            while size <= limit:
                chunk = await content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                silence.reschedule(loop.time() + timeout_s)
    except TimeoutError:
        raise RequestTimeout() from None
    return b"".join(chunks)


async def _timed(content: StreamReader, timeout_s: float, first: bytes, body: Body) -> AsyncIterator[bytes]:
    """The rest of the body as it comes, after ``first``; a silence longer than ``timeout_s``
    marks ``body`` stalled and raises RequestTimeout (the upstream client then drops the exchange,
    so the upstream never takes a part of a body for the whole)."""
    if first:
        yield first
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await content.readany()
        except TimeoutError:
            body.stalled = True
            if body.on_stall is not None:
                body.on_stall()
            raise RequestTimeout() from None
        if not chunk:
            return
        yield chunk
