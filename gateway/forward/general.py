"""Step 6, the general path: aiohttp's client carries what the lean path (forward/lean.py) does not:
HEAD, chunked request bodies, and WebSocket upgrades (with forward/websocket.py).

In: a client session per upstream, the request, its upstream URL and the filtered headers.
Out: the upstream's answer, as relay.py takes it from either client.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config.load import UpstreamConfig
from ..errors import GatewayError, RequestTimeout, UpstreamFailed, UpstreamTimeout
from .answer_head import MalformedAnswer, check_answer_head
from .headers import HOST
from .request_body import Body
from .seam import Outgoing, UpstreamAnswer

# Added by aiohttp's client unless skipped; a proxy must not invent them.
_CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def open_session(up: UpstreamConfig, tls: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """The upstream's client session (needs the running loop); ``tls``: the context for HTTPS.

    Every request gets a connection of its own, closed after its answer (``force_close``): aiohttp's
    pool reads and keeps an answer an upstream sends on an idle connection, and hands it to the next
    request on that connection as its own (aio-libs/aiohttp#13656), one client's answer to another.
    This path carries the rarer requests (HEAD, chunked uploads, WebSocket upgrades, which never go
    back to a pool anyway); the lean path's pool refuses such bytes (forward/pool.py)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=up.max_connections, ssl=tls if tls is not None else True,
                                       force_close=True),
        timeout=_timeout(up),
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        request_class=_VerbatimRequest, response_class=_CheckedResponse, trust_env=False)


def _timeout(up: UpstreamConfig) -> aiohttp.ClientTimeout:
    # No total: a stream may last as long as it keeps sending. sock_read starts once the request
    # body is sent and restarts on every read, so it bounds both the wait for the answer's
    # headers and each silence inside the body. connect also bounds the wait for a pool slot.
    return aiohttp.ClientTimeout(total=None, connect=max(up.timeout, up.connect_timeout),
                                 sock_connect=up.connect_timeout, sock_read=up.timeout)


class _VerbatimRequest(aiohttp.ClientRequest):
    """Sends the headers request_header_items built, as they are: aiohttp invents no Accept,
    Accept-Encoding, User-Agent or Content-Type (``skip_auto_headers`` without rebuilding the skip
    list on every request), and adds only Host, which the filter always removes, and ``Connection:
    close`` (every connection of this path closes after its answer, see open_session)."""

    _SKIPPED: CIMultiDict[None] = CIMultiDict((name, None) for name in _CLIENT_AUTO_HEADERS)

    def update_headers(self, headers: object) -> None:
        assert isinstance(headers, CIMultiDict) and HOST not in headers
        self.headers = CIMultiDict(((HOST, self.url.host_port_subcomponent),))
        self.headers.extend(headers)   # one copy in C, instead of a Python loop over every header

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = self._SKIPPED


class _CheckedResponse(aiohttp.ClientResponse):
    """Refuses a malformed head (forward/answer_head.py: aiohttp's parser lets through a status outside
    100..599, control characters in the reason or a value, and codings other than chunked) with
    ClientResponseError, as aiohttp does for the heads its parser refuses; so a plain request and a
    WebSocket handshake both get 502."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        await super().start(connection)
        try:
            codings = self.headers.getall("Transfer-Encoding", None)
            check_answer_head(self.status, self.reason or "", self.headers.items(),
                              f"{self.version.major}.{self.version.minor}" if self.version else "1.1",
                              ", ".join(codings) if codings else None)
        except MalformedAnswer as exc:
            # A body that came with the head has put the connection back in the pool already:
            # close it there, so nothing more is read from an upstream that broke the protocol.
            if protocol is not None:
                protocol.close()
            raise aiohttp.ClientResponseError(self.request_info, self.history, status=self.status,
                                              message=str(exc)) from exc
        return self


def upstream_url(origin: str, target: str) -> URL:
    """The whole URL of a request target (aiohttp's client takes URLs), sent as it is, never re-quoted."""
    return URL(origin + target, encoded=True)


async def send(session: aiohttp.ClientSession, origin: str, out: Outgoing) -> UpstreamAnswer:
    """Send ``out`` to the upstream at ``origin`` (its body read whole or streamed; the headers carry its
    Content-Length when known, else aiohttp sends it chunked) and return the answer once its head has come."""
    body = out.body
    resp = await _send(session, out.method, upstream_url(origin, out.target), CIMultiDict(out.headers), body)
    if body.stream is not None:
        # The answer may be streaming while the body is still being sent. If the client then stops
        # sending, the exchange is over: the answer's relay must end cut off, never as if whole
        # (closing the connection instead would end an answer that runs until the close cleanly).
        def stalled() -> None:
            resp.content.set_exception(aiohttp.ClientPayloadError("the request body stopped coming"))

        body.on_stall = stalled
        if body.stalled:
            stalled()
    return _GeneralAnswer(resp)


class _GeneralAnswer:
    """aiohttp's ClientResponse as relay.py takes it: its errors become the gateway's at this boundary."""

    __slots__ = ("_resp", "status", "reason", "content_length", "read")
    broken: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status, self.reason, self.content_length = resp.status, resp.reason, resp.content_length
        self.read = resp.read

    @property
    def header_items(self) -> Iterable[tuple[str, str]]:
        return self._resp.headers.items()

    def failure(self, exc: BaseException) -> GatewayError:
        # asyncio's first: aiohttp's timeout errors are ClientErrors too.
        return UpstreamTimeout() if isinstance(exc, asyncio.TimeoutError) else UpstreamFailed()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()

    def finish(self, complete: bool) -> None:
        # Release once the body came whole; anything unfinished (an error, the client gone, the task
        # cancelled) closes the connection, so the upstream sees the request end.
        if complete:
            self._resp.release()
        else:
            self._resp.close()


async def _send(session: aiohttp.ClientSession, method: str, url: URL,
                headers: CIMultiDict[str], body: Body) -> aiohttp.ClientResponse:
    data = body.data if body.data is not None else body.stream
    try:
        resp = await session.request(method, url, headers=headers, data=data, allow_redirects=False)
    except (asyncio.TimeoutError, aiohttp.ClientError, RequestTimeout) as exc:
        if body.stalled:   # the client stopped sending its body: whatever aiohttp made of it
            raise RequestTimeout() from exc
        if isinstance(exc, asyncio.TimeoutError):   # first: aiohttp's timeout errors are ClientErrors too
            raise UpstreamTimeout() from exc
        raise UpstreamFailed() from exc
    if resp.status == 101:   # switching protocols, though no upgrade was asked for (WebSockets: forward/websocket.py)
        resp.close()
        raise UpstreamFailed()
    return resp
