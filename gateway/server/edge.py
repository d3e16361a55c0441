"""The edge of both ports, before step 1: a request head must be whole within listen.header_timeout,
the parser's own refusals are the gateway's JSON errors, and every answer carries an X-Request-Id
and no Server header of the gateway's own. In: a client's bytes. Out: requests for the app's
handler, or a 400/408 JSON answer and a closed connection.

aiohttp has no public hook for any of this (``on_response_prepare`` fires only for requests that
went through the router, which the FrontDoor skips, and the parser's errors never reach an app), so
this module leans on aiohttp internals: RequestHandler's ``_messages``, ``_waiter``, ``_close``,
``_manager``, ``_request_in_progress`` and its ``_ErrInfo`` messages, ``Application._make_request(_cls=...)``,
``Request._prepare_hook`` and ``_protocol``, ``Server._kwargs``, and BaseRunner's ``_shutdown_timeout``
(read by its ``cleanup``, which must run after the drain: 0 means no limit there).
tests/integration/server/test_edge_server.py and test_drain.py fail when a new aiohttp changes them.

SIGTERM drains a port (EdgeRunner.cleanup): the listener closes, then every answer says
``Connection: close`` and ends its connection, requests in progress finish, an idle keep-alive
connection's next request is still served for DRAIN_IDLE_GRACE_S, all within listen.drain_timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from aiohttp import hdrs, http_exceptions, web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDictProxy

from ..config.load import ListenConfig
from ..errors import BadRequest, GatewayError, RequestTimeout, error_response
from ..forward.request_id import REQUEST_ID, pick_request_id

log = logging.getLogger("tokengate")
# How long a drain keeps idle keep-alive connections open for a next request that may already be on its
# way (it is served, with Connection: close); closing them at once would drop that request unanswered.
DRAIN_IDLE_GRACE_S = 1.0
DRAIN_POLL_S = 0.02   # how often a drain looks at its connections (only while draining)
_SHORTEST_LIMIT_S = 0.001   # what is left of a drain that ran out: aiohttp reads a limit of 0 as none

# What a refused head was, in words (never the bytes the client sent); the most specific class first.
_MALFORMED = (
    (http_exceptions.LineTooLong, "the request line or a header is too long"),
    (http_exceptions.BadHttpMethod, "the request method is not valid"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.InvalidHeader, "a request header is malformed"),
    (http_exceptions.InvalidURLError, "the request target is malformed"),
)


def edge_options(listen: ListenConfig) -> dict[str, Any]:
    """The runner arguments of a port served with ``listen``'s limits. ``lingering_time=0``: aiohttp
    would otherwise read and throw away up to 10 s of a body nobody read (a refused upload, tens of
    megabytes); the connection closes after the answer instead."""
    return {"header_timeout_s": listen.header_timeout, "keepalive_timeout": listen.idle_timeout,
            "lingering_time": 0.0}


class EdgeRequest(web.Request):
    """A request whose answer, whoever made it, carries an X-Request-Id and no aiohttp Server header."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Called by StreamResponse._start right after _prepare_headers did
        # headers.setdefault("Server", SERVER_SOFTWARE). Compared by identity: an upstream's own
        # Server header is a string of its own even when its text is the same, and is relayed.
        headers = response.headers
        if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            del headers[hdrs.SERVER]
        if REQUEST_ID not in headers:   # proxied answers have theirs already
            headers[REQUEST_ID] = pick_request_id(self.headers.getall(REQUEST_ID, []))
        if self._match_info is not None:   # routed: the app's on_response_prepare signals; else no coroutine
            await super()._prepare_hook(response)
        server = self._protocol._manager   # None once the connection is gone
        if isinstance(server, EdgeServer) and server.draining and response.status != 101:
            # Draining: this is the connection's last answer and it says so (RFC 9112 9.6), so the
            # client sends its next request elsewhere instead of into a connection about to close.
            # It replaces the "keep-alive" an HTTP/1.0 answer has. (A WebSocket's 101 keeps its Upgrade.)
            headers[hdrs.CONNECTION] = "close"
            response.force_close()


class EdgeHandler(RequestHandler):
    """aiohttp's connection protocol with a head timeout and JSON errors.

    The head clock starts with the connection, and on keep-alive with the first byte of the next
    head; it stops when the parser has the whole head. A head that arrives in one read (nearly all
    of them) costs no timer at all; a split one costs one TimerHandle. It never runs while a request
    is handled, so a long upload is the body timeout's business, never this one's."""

    __slots__ = ("_header_timeout_s", "_head_timer", "_head_begun")

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False   # some bytes of the head being timed came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._header_timeout_s, self._on_head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:   # the parser has a whole head (or refused one): nothing left to time
            if self._head_timer is not None:
                self._stop_head_clock()
            return
        waiter = self._waiter
        if data and waiter is not None and not waiter.done():
            # start() waits for a head and part of one came. (Bytes that come while a request is
            # handled are its body, or a pipelined head that idle_timeout bounds.)
            self._head_begun = True
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(self._header_timeout_s, self._on_head_timeout)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_begun = False

    def _on_head_timeout(self) -> None:
        begun = self._head_begun
        self._head_timer, self._head_begun = None, False
        waiter = self._waiter
        if self._close or self._force_close or self._messages or waiter is None or waiter.done():
            return   # closing, a whole head waits for start(), or a request is being handled
        if not begun:
            self.force_close()   # nothing came: there is nobody to answer
            return
        # Answered the way the parser's own refusals are (start() -> handle_error): no further byte
        # is parsed (_close; close() would cancel start()'s wait instead), then the 408 goes out and
        # the connection closes.
        self._close = True
        self._messages.append((_ErrInfo(status=408, exc=RequestTimeout(), message=""), EMPTY_PAYLOAD))
        waiter.set_result(None)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The answer to a head the parser refused (400), one too slow (408), or a bug that escaped
        every handler (500, logged): JSON like every other error, never the request's bytes, never a
        traceback; the connection closes after it."""
        if request.writer.output_size > 0:   # as aiohttp: the answer has begun, only cutting the connection is left
            raise ConnectionError("the answer has started; it cannot become an error answer")
        if isinstance(exc, GatewayError) or status == 400:
            error = exc if isinstance(exc, GatewayError) else BadRequest(_describe(exc))
            if log.isEnabledFor(logging.DEBUG):   # a client's junk is not the gateway's error
                log.debug("refused a request head", extra={"code": error.code, "client": request.remote})
        else:   # 500 (or aiohttp's 504 for a TimeoutError): something escaped every handler
            log.error("unhandled error", exc_info=exc, extra={"method": request.method, "path": request.rel_url.path})
            error = GatewayError()
        resp = error_response(error)
        resp.headers[REQUEST_ID] = pick_request_id(_request_ids(request))
        resp.headers[hdrs.CONNECTION] = "close"   # said even to HTTP/1.0, the version of a refused head's answer
        resp.force_close()
        return resp


def _describe(exc: BaseException | None) -> str:
    for kind, description in _MALFORMED:
        if isinstance(exc, kind):
            return description
    return BadRequest.description


def _request_ids(request: web.BaseRequest) -> list[str]:
    # A refused head comes as a stand-in request whose headers are a plain {}: nothing of the client's.
    headers = request.headers
    return headers.getall(REQUEST_ID, []) if isinstance(headers, CIMultiDictProxy) else []


class EdgeServer(web.Server):
    """aiohttp's Server, making EdgeHandlers. ``draining``: every answer from now on closes its connection."""

    def __init__(self, handler: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.draining = False

    def __call__(self) -> EdgeHandler:
        return EdgeHandler(self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs)

    async def drain(self, deadline: float, idle_grace_s: float) -> None:
        """Set ``draining`` and wait, until the loop time ``deadline`` at the latest, while a connection
        has a request in progress, queued or coming in, and for ``idle_grace_s`` while idle keep-alive
        connections are open. Returns at once when every connection has closed."""
        self.draining = True
        loop = self._loop
        idle_until = min(loop.time() + idle_grace_s, deadline)
        # A bounded poll: aiohttp tells nobody when a request ends or a connection goes.
        while (now := loop.time()) < deadline:
            connections = self.connections
            if not connections or (now >= idle_until and not any(map(_is_busy, connections))):
                return
            await asyncio.sleep(min(DRAIN_POLL_S, deadline - now))


def _is_busy(conn: RequestHandler) -> bool:
    # A head that has begun to arrive counts: its client has sent (part of) a request already.
    return conn._request_in_progress or bool(conn._messages) or (isinstance(conn, EdgeHandler) and conn._head_begun)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server is an EdgeServer making EdgeRequests (see the module docstring).
    ``header_timeout_s`` bounds reading a request head; the other keywords are aiohttp's."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def cleanup(self) -> None:
        """Drain, then aiohttp's cleanup, within ``shutdown_timeout`` (listen.drain_timeout) in all:
        the listener closes (new connections are refused), requests in progress and an idle
        connection's next request within DRAIN_IDLE_GRACE_S are answered with Connection: close, and
        aiohttp closes what is left and cuts requests still running when the time is up."""
        server = self.server
        if isinstance(server, EdgeServer):   # set up (a runner that never was has nothing to drain)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._shutdown_timeout
            for site in list(self.sites):
                await site.stop()
            await server.drain(deadline, DRAIN_IDLE_GRACE_S)
            self._shutdown_timeout = max(deadline - loop.time(), _SHORTEST_LIMIT_S)
        await super().cleanup()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()   # starts the app; aiohttp's Server with every handler argument
        # The app's own request factory (its client_max_size), making EdgeRequests.
        factory = functools.partial(self.app._make_request, _cls=EdgeRequest)
        return EdgeServer(made.request_handler, header_timeout_s=self.header_timeout_s, request_factory=factory,
                          handler_cancellation=made.handler_cancellation, **made._kwargs)
