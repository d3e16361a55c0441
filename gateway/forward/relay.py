"""Step 6, the way back: the upstream's answer to the client, the same for both upstream clients
(forward/lean.py, forward/general.py), which hand it over as a seam.UpstreamAnswer. A small answer
goes out in one write once it is whole; any other is streamed as it arrives, and cut off (never
ended cleanly) if the upstream breaks inside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable

from aiohttp import web
from multidict import CIMultiDict

from ..logs import ACCESS_NOTE, CLIENT_LEFT, CLIENT_STALLED, UPSTREAM_TRUNCATED, AccessNote
from .dpop_request import NONCE_HEADER
from .headers import HOP_BY_HOP, response_header_items
from .lifetime import Lifetime
from .request_id import REQUEST_ID
from .seam import UpstreamAnswer

log = logging.getLogger("tokengate.forward")

# An answer with a Content-Length up to this size is read whole and sent in one write (headers and
# body together); a larger one, or one without a length (chunked, SSE), is streamed as it arrives.
BUFFER_MAX_BYTES = 256 * 1024
_NOT_RELAYED = HOP_BY_HOP | {REQUEST_ID.lower()}   # the answer carries the gateway's request id


async def relay(request: web.Request, sending: Awaitable[UpstreamAnswer], request_id: str, lifetime: Lifetime,
                note: AccessNote | None, stall_s: float, renewed_nonce: str | None = None) -> web.StreamResponse:
    """Either client's exchange (``sending``: its send): the upstream's time until the answer's head
    (``note.upstream_ms``, for the access line and the metrics), then the answer to the client, whole
    in one write when small (nothing goes out unless the whole body came), else streamed. HEAD
    answers carry a Content-Length but no body: streamed, so their headers go out as they are.
    ``renewed_nonce``: a DPoP nonce the answer hands out (RENEWED_NONCE)."""
    sent_at = time.perf_counter()
    answer = await sending
    if note is not None:
        note.upstream_ms = (time.perf_counter() - sent_at) * 1000
    complete = False
    try:
        if request.method != "HEAD" and is_small(answer.content_length, answer.status):
            try:
                body = await answer.read()
            except answer.broken as exc:
                raise answer.failure(exc) from exc
            complete = True
            out = whole_answer(answer.status, answer.reason, answer.header_items, body, request_id)
            if renewed_nonce is not None:
                out.headers[NONCE_HEADER] = renewed_nonce
            return out
        out, complete = await stream_answer(request, answer.status, answer.reason, answer.header_items,
                                            answer.chunks(), answer.content_length is None, request_id, lifetime,
                                            answer.broken, stall_s, renewed_nonce)
        return out
    finally:
        answer.finish(complete)


def is_small(content_length: int | None, status: int) -> bool:
    """Read whole, then sent in one write? (204 and 304 carry a length but no body: streamed, so
    their headers go out as they are.)"""
    return content_length is not None and content_length <= BUFFER_MAX_BYTES and status not in (204, 304)


def whole_answer(status: int, reason: str | None, headers: Iterable[tuple[str, str]], body: bytes,
                 request_id: str) -> web.Response:
    """The answer in one piece (the caller has its whole body)."""
    items = response_header_items(headers, _NOT_RELAYED)
    items.append((REQUEST_ID, request_id))
    return web.Response(status=status, reason=reason, headers=items, body=body)


async def stream_answer(request: web.Request, status: int, reason: str | None, headers: Iterable[tuple[str, str]],
                        chunks: AsyncIterator[bytes], endless: bool, request_id: str, lifetime: Lifetime,
                        broken: tuple[type[BaseException], ...], stall_s: float,
                        renewed_nonce: str | None = None) -> tuple[web.StreamResponse, bool]:
    """Stream the answer; ``endless`` (no length: chunked, SSE) ends with the token too. Returns the
    response and whether the body came whole (``broken``: the upstream client's errors). A client
    that takes nothing of it for ``stall_s`` is cut off, so it holds no upstream connection."""
    out = web.StreamResponse(status=status, reason=reason,
                             headers=CIMultiDict(response_header_items(headers, HOP_BY_HOP)))
    out.headers[REQUEST_ID] = request_id
    if renewed_nonce is not None:
        out.headers[NONCE_HEADER] = renewed_nonce
    if endless:   # it may outlive the token
        with lifetime.cancel_on_end():
            return out, await _copy_body(request, chunks, out, broken, stall_s)
    return out, await _copy_body(request, chunks, out, broken, stall_s)


async def _copy_body(request: web.Request, chunks: AsyncIterator[bytes], out: web.StreamResponse,
                     broken: tuple[type[BaseException], ...], stall_s: float) -> bool:
    loop = asyncio.get_running_loop()
    # Only the client's writes are timed (a write waits while the client reads nothing); the
    # upstream's own silences are its timeout's business (an SSE stream may be quiet for long).
    stall = asyncio.timeout_at(loop.time() + stall_s)
    upstreams_turn = False   # waiting for the upstream's next chunk: what fails then is the upstream's fault
    try:
        async with stall:
            await out.prepare(request)
            stall.reschedule(None)
            upstreams_turn = True
            async for chunk in chunks:   # each chunk as it arrives: SSE stays live
                upstreams_turn = False
                stall.reschedule(loop.time() + stall_s)
                await out.write(chunk)
                stall.reschedule(None)
                upstreams_turn = True
    except (*broken, ConnectionError, TimeoutError) as exc:
        # The status line is gone already; cutting the connection is the only honest signal left
        # (a clean end would pass a truncated body off as complete). Whose fault it was is decided by
        # what was awaited, not by the error's type: aiohttp's write to a closing client is a ClientError.
        code = UPSTREAM_TRUNCATED if upstreams_turn else CLIENT_STALLED if stall.expired() else CLIENT_LEFT
        if (note := request.get(ACCESS_NOTE)) is not None:
            note.code = code   # the access line's code, and the metrics' outcome (upstream_broken) and reason
        log.info("stream aborted", extra={"method": request.method, "error": type(exc).__name__, "code": code,
                                          "client_stalled": stall.expired()})
        if request.transport is not None:
            if stall.expired():
                request.transport.abort()   # close() would wait for a client that reads nothing
            else:
                request.transport.close()
        return False
    return True
