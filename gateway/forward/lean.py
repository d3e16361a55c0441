"""Step 6, the lean path: most proxied requests go over forward/h1client.py, on the keep-alive connections
of forward/pool.py (forward/forwarder.py decides which ones: see ``fits``).

In: the request, its upstream pool and target, the filtered headers. Out: the upstream's answer,
read whole when small and sent in one write, else streamed as it arrives. A body read whole goes
in the same write as the head; a larger one is streamed as it comes.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..errors import BadRequest, GatewayError, RequestTimeout, UpstreamFailed, UpstreamTimeout
from ..logs import AccessNote
from .h1client import TimedOut, UpstreamError, request_head
from .lifetime import Lifetime
from .pool import UpstreamPool
from .relay import is_small, stream_answer, whole_answer
from .request_body import Body


def fits(request: web.Request, body: Body) -> bool:
    """Can the lean path carry this request? Not HEAD (its answer has a length but no body), and a
    body only with a known length (a chunked one longer than the buffer goes through aiohttp,
    which re-chunks it)."""
    return request.method != "HEAD" and (body.stream is None or body.length is not None)


async def forward(request: web.Request, pool: UpstreamPool, target: str, host: str,
                  headers: list[tuple[str, str]], body: Body, request_id: str, timeout_s: float, lifetime: Lifetime,
                  note: AccessNote | None, stall_s: float) -> web.StreamResponse:
    """``body``: sent with the head when read whole, else streamed as it comes; ``stall_s``: how long
    the client may leave a streamed answer unread (listen.body_timeout)."""
    try:
        head = request_head(request.method, target, host, headers)
    except ValueError as exc:   # unreachable through aiohttp's server parser; kept as a guard
        raise BadRequest() from exc
    if body.data:
        head += body.data   # one write: head and body together
    sent_at = time.perf_counter()
    try:
        answer = await pool.send(request.method, head, body.stream, timeout_s)
    except UpstreamError as exc:
        raise _failure(exc, body) from exc
    if note is not None:
        note.upstream_ms = (time.perf_counter() - sent_at) * 1000   # until the answer's headers
    try:
        if is_small(answer.content_length, answer.status):
            try:   # nothing is sent to the client unless the whole body arrived
                whole = await answer.read()
            except UpstreamError as exc:
                raise _failure(exc, body) from exc
            return whole_answer(answer.status, answer.reason, answer.headers, whole, request_id)
        out, _ = await stream_answer(request, answer.status, answer.reason, answer.headers, answer.chunks(),
                                     answer.content_length is None, request_id, lifetime, (UpstreamError,),
                                     stall_s)
        return out
    finally:
        answer.finish()   # back to the pool if the answer was whole, else the connection closes


def _failure(exc: UpstreamError, body: Body) -> GatewayError:
    """408 when the client stopped sending its body, 504 for an upstream that was silent too long,
    else 502."""
    if body.stalled:
        return RequestTimeout()
    return UpstreamTimeout() if isinstance(exc, TimedOut) else UpstreamFailed()
