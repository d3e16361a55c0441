"""Step 6, the lean path: most proxied requests go over forward/h1client.py, on the keep-alive connections
of forward/pool.py (forward/forwarder.py decides which ones: see ``fits``).

In: the request, its upstream pool and target, the filtered headers. Out: the upstream's answer, as
relay.py takes it from either client. A body read whole goes in the same write as the head; a
larger one is streamed as it comes.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, GatewayError, RequestTimeout, UpstreamFailed, UpstreamTimeout
from .h1client import Answer, TimedOut, UpstreamError, request_head
from .pool import UpstreamPool
from .request_body import Body
from .seam import Outgoing, UpstreamAnswer


def fits(request: web.Request, body: Body) -> bool:
    """Can the lean path carry this request? Not HEAD (its answer has a length but no body), and a
    body only with a known length (a chunked one longer than the buffer goes through aiohttp,
    which re-chunks it)."""
    return request.method != "HEAD" and (body.stream is None or body.length is not None)


async def send(pool: UpstreamPool, out: Outgoing, timeout_s: float) -> UpstreamAnswer:
    """Send ``out`` on a connection of ``pool`` (its body with the head when read whole, else streamed
    as it comes) and return the answer once its head has come; the upstream's failures are 502/504."""
    body = out.body
    try:
        head = request_head(out.method, out.target, out.host, out.headers)
    except ValueError as exc:   # unreachable through aiohttp's server parser; kept as a guard
        raise BadRequest() from exc
    if body.data:
        head += body.data   # one write: head and body together
    try:
        answer = await pool.send(out.method, head, body.stream, timeout_s)
    except UpstreamError as exc:
        raise _failure(exc, body) from exc
    return _LeanAnswer(answer, body)


class _LeanAnswer:
    """h1client's Answer as relay.py takes it: its errors become the gateway's at this boundary."""

    __slots__ = ("_answer", "_body", "status", "reason", "content_length", "read", "chunks")
    broken: tuple[type[BaseException], ...] = (UpstreamError,)

    def __init__(self, answer: Answer, body: Body) -> None:
        self._answer, self._body = answer, body
        self.status, self.reason, self.content_length = answer.status, answer.reason, answer.content_length
        self.read, self.chunks = answer.read, answer.chunks

    @property
    def header_items(self) -> list[tuple[str, str]]:
        return self._answer.headers

    def failure(self, exc: BaseException) -> GatewayError:
        return _failure(exc, self._body)

    def finish(self, complete: bool) -> None:
        self._answer.finish()   # back to the pool if the answer was read whole, else the connection closes


def _failure(exc: BaseException, body: Body) -> GatewayError:
    """408 when the client stopped sending its body, 504 for an upstream that was silent too long,
    else 502."""
    if body.stalled:
        return RequestTimeout()
    return UpstreamTimeout() if isinstance(exc, TimedOut) else UpstreamFailed()
