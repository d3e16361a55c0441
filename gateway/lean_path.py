"""Step 6, the lean path: most proxied requests go over h1client.py, on the keep-alive connections
of upstream_pool.py (forward.py decides which ones: see ``fits``).

In: the request, its upstream pool and target, the filtered headers. Out: the upstream's answer,
read whole when small and sent in one write, else streamed as it arrives. The request body is
streamed as it comes.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from multidict import CIMultiDict

from .aiohttp_path import BUFFER_MAX_BYTES, NOT_RELAYED
from .errors import BadRequest, UpstreamFailed, UpstreamTimeout
from .h1client import Answer, TimedOut, UpstreamError, request_head
from .lifetime import Lifetime
from .logs import AccessNote
from .proxy_headers import HOP_BY_HOP, response_header_items
from .request_id import REQUEST_ID
from .upstream_pool import UpstreamPool

log = logging.getLogger("tokengate.forward")


def fits(request: web.Request) -> bool:
    """Can the lean path carry this request? Not HEAD (its answer has a length but no body), and a
    body only with a Content-Length (a chunked one goes through aiohttp, which re-chunks it)."""
    return request.method != "HEAD" and (not request.body_exists or request.content_length is not None)


async def forward(request: web.Request, pool: UpstreamPool, target: str, host: str,
                  headers: list[tuple[str, str]], request_id: str, timeout_s: float, lifetime: Lifetime,
                  note: AccessNote | None) -> web.StreamResponse:
    echo = {REQUEST_ID: request_id}
    try:
        head = request_head(request.method, target, host, headers)
    except ValueError as exc:   # unreachable through aiohttp's server parser; kept as a guard
        raise BadRequest(headers=echo) from exc
    body = request.content.iter_any() if request.body_exists else None   # streamed, never read whole
    sent_at = time.perf_counter()
    try:
        answer = await pool.send(request.method, head, body, timeout_s)
    except TimedOut as exc:
        raise UpstreamTimeout(headers=echo) from exc
    except UpstreamError as exc:
        raise UpstreamFailed(headers=echo) from exc
    if note is not None:
        note.upstream_ms = (time.perf_counter() - sent_at) * 1000   # until the answer's headers
    try:
        if _is_small(answer):
            return await _read_whole(answer, request_id)
        return await _stream(request, answer, request_id, lifetime)
    finally:
        answer.finish()   # back to the pool if the answer was whole, else the connection closes


def _is_small(answer: Answer) -> bool:
    length = answer.content_length
    return length is not None and length <= BUFFER_MAX_BYTES and answer.status not in (204, 304)


async def _read_whole(answer: Answer, request_id: str) -> web.Response:
    """The answer in one piece; nothing is sent to the client unless the whole body arrived."""
    try:
        body = await answer.read()
    except TimedOut as exc:
        raise UpstreamTimeout(headers={REQUEST_ID: request_id}) from exc
    except UpstreamError as exc:
        raise UpstreamFailed(headers={REQUEST_ID: request_id}) from exc
    headers = response_header_items(answer.headers, NOT_RELAYED)
    headers.append((REQUEST_ID, request_id))
    return web.Response(status=answer.status, reason=answer.reason, headers=headers, body=body)


async def _stream(request: web.Request, answer: Answer, request_id: str, lifetime: Lifetime) -> web.StreamResponse:
    out = web.StreamResponse(status=answer.status, reason=answer.reason,
                             headers=CIMultiDict(response_header_items(answer.headers, HOP_BY_HOP)))
    out.headers[REQUEST_ID] = request_id
    if answer.content_length is None:   # a stream (chunked, SSE): it may outlive the token
        with lifetime.cancel_on_end():
            await _copy_body(request, answer, out)
    else:
        await _copy_body(request, answer, out)
    return out


async def _copy_body(request: web.Request, answer: Answer, out: web.StreamResponse) -> None:
    try:
        await out.prepare(request)
        async for chunk in answer.chunks():   # each chunk as it arrives: SSE stays live
            await out.write(chunk)
    except (UpstreamError, ConnectionError) as exc:
        # The status line is gone already; cutting the connection is the only honest signal left
        # (a clean end would pass a truncated body off as complete).
        log.info("stream aborted", extra={"method": request.method, "error": type(exc).__name__})
        if request.transport is not None:
            request.transport.close()
