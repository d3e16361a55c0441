"""A lean HTTP/1.1 client for the common proxied request (forward/lean.py decides which ones): one
request and its answer on a pooled keep-alive connection (forward/pool.py).

aiohttp's client costs about 100 µs of CPU per request on this stack, more than everything else
the gateway does for a cached token. This one writes a request head built once and lets llhttp
(httptools) parse the answer.

In: a request head (``request_head``) and the body as it comes. Out: an ``Answer`` whose body is
read whole or streamed. ``UpstreamPool.send`` raises ``Unreachable`` or ``TimedOut`` before the
answer's head; a failure inside the body raises them from ``read`` or ``chunks``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

import httptools

from .answer_head import MalformedAnswer, check_answer_head

MAX_HEAD_BYTES = 64 * 1024    # an answer's status line and headers together
MAX_FIELD_BYTES = 8190        # one header line, and
MAX_HEADERS = 128             # as many headers as aiohttp's client (and the clients behind) accept
PAUSE_BYTES = 256 * 1024      # a streamed body buffered beyond this stops reading from the upstream


class UpstreamError(Exception):
    """The upstream could not be reached, broke the protocol or hung up."""


class Unreachable(UpstreamError):
    pass


class TimedOut(UpstreamError):
    pass


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")   # as aiohttp's parser does


class Connection(Protocol):
    """What an Answer needs of the connection it reads from (pool.Connection)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    closed: bool

    async def drain(self) -> None: ...

    def abort(self) -> None: ...

    def done(self, reusable: bool) -> None: ...


class Answer:
    """One request's answer on one connection; also the parser's callbacks (``on_*``)."""

    __slots__ = ("_conn", "_loop", "_parser", "_timeout_s", "status", "reason", "_reason", "_raw_headers", "headers",
                 "content_length", "_until_eof", "_head_bytes", "_fed_before_head", "_chunks", "_buffered",
                 "_paused", "_pausable", "head_done", "complete", "received", "_keep_alive", "error", "_waiter",
                 "last_data", "_finished", "_pump", "_sending", "_sent")

    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self._conn = conn
        self._loop = conn.loop
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._timeout_s = timeout_s
        self.status = 0
        self.reason = ""
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._until_eof = False
        self._head_bytes = 0
        self._fed_before_head = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._pausable = True
        self.head_done = False
        self.complete = False
        self.received = False         # any byte of an answer came: never send this request again
        self._keep_alive = False
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.last_data = self._loop.time()   # the upstream's silence is timed from here (Connection's timer)
        self._finished = False
        self._pump: asyncio.Task[None] | None = None   # sends the request body, if there is one
        self._sending = False
        self._sent = True                              # the whole request is on its way

    # -- the parser's callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:   # a second answer to one request: the connection cannot be trusted
            raise UpstreamError("more than one answer")

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self._head_bytes += size
        if size > MAX_FIELD_BYTES or self._head_bytes > MAX_HEAD_BYTES or len(self._raw_headers) >= MAX_HEADERS:
            raise UpstreamError("the answer's head is too large")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()   # type: ignore[union-attr]   # set while parsing
        if 100 <= status < 200:   # 100 Continue, 103 Early Hints: the answer is still to come
            self._raw_headers.clear()
            self._reason = b""
            return
        self.status, self.reason = status, _decode(self._reason)
        coding: str | None = None   # every Transfer-Encoding value, joined
        headers = self.headers
        for raw_name, raw_value in self._raw_headers:
            name, value = _decode(raw_name), _decode(raw_value)
            headers.append((name, value))
            lowered = name.lower()
            if lowered == "content-length":
                self.content_length = int(value)   # llhttp let through only digits, and one value
            elif lowered == "transfer-encoding":
                coding = value if coding is None else f"{coding}, {value}"
        self._raw_headers = []
        try:   # llhttp lets through a status outside 100..599, control characters in the reason, and codings
            check_answer_head(status, self.reason, headers, self._parser.get_http_version(),   # type: ignore[union-attr]
                              coding)
        except MalformedAnswer as exc:   # raised from a callback: parsing stops, feed fails the answer
            raise UpstreamError(f"malformed answer: {exc}") from exc
        # Past the check, a coding is one chunked.
        self._until_eof = self.content_length is None and coding is None and status not in (204, 304)
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_BYTES and self._pausable and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:   # an informational answer ended
            return
        self.complete = True
        self._keep_alive = self._parser.should_keep_alive()   # type: ignore[union-attr]
        self._wake()

    # -- what the connection tells it ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.received = True
        self.last_data = self._loop.time()
        if self.complete:   # bytes after a whole answer: nothing was asked for
            self.fail(UpstreamError("bytes after the answer"))
            return
        parser = self._parser
        if parser is None:   # finished: the connection no longer passes data here
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # A callback's own UpstreamError arrives wrapped (HttpParserCallbackError): keep its reason.
            own = exc.__context__
            if not isinstance(own, UpstreamError):
                own = UpstreamError(f"malformed answer: {type(exc).__name__}")
            self.fail(own)
            return
        if not self.head_done:   # what the parser holds of a header not yet whole is bounded too
            self._fed_before_head += len(data)
            if self._fed_before_head > MAX_HEAD_BYTES:
                self.fail(UpstreamError("the answer's head is too large"))

    def ended(self, exc: Exception | None) -> None:
        """The connection closed."""
        if self.complete or self.error is not None:
            return
        if self.head_done and self._until_eof and exc is None:   # a body that runs until the close
            self.complete = True
            self._wake()
            return
        self.fail(Unreachable("the upstream closed the connection"))

    def fail(self, error: UpstreamError) -> None:
        """End the exchange and close the connection; a whole answer stays good to relay."""
        if self.error is None and not self.complete:
            self.error = error
        self._conn.abort()
        self._wake()

    def send_body(self, body: AsyncIterator[bytes]) -> None:
        """Stream the request body to the upstream as it comes, while the answer is awaited (an
        upstream may answer, or start to, before the body ends)."""
        self._sent, self._sending = False, True
        self._pump = asyncio.ensure_future(self._send_body(body))

    async def _send_body(self, body: AsyncIterator[bytes]) -> None:
        conn = self._conn
        try:
            async for chunk in body:
                if conn.closed:
                    return
                conn.transport.write(chunk)   # type: ignore[union-attr]   # set once connected
                await conn.drain()
            self._sent = True
        except Exception as exc:   # (aiohttp raises ConnectionResetError for a client gone mid-body)
            # The client's body broke off: the upstream must not take a part for the whole.
            self.fail(Unreachable(f"the request body broke off: {type(exc).__name__}"))
        finally:
            self._sending = False
            self.last_data = self._loop.time()   # the wait for the answer starts once the body is sent

    def silence_deadline(self) -> float | None:
        """When the upstream's silence must be checked again; None once it was too long (the
        exchange failed with TimedOut). Waiting on a client that is behind, or that is still
        sending its body, does not count."""
        now = self._loop.time()
        if self.complete or self.error is not None or self._paused or self._sending:
            self.last_data = now
        elif now - self.last_data >= self._timeout_s:
            self.fail(TimedOut("the upstream was silent too long"))
            return None
        return self.last_data + self._timeout_s

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- what the caller uses --------------------------------------------------------------------
    async def wait_head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (the caller knows it is small); read without pausing."""
        self._pausable = False
        self._resume()
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= PAUSE_BYTES // 2:
                    self._resume()
                yield chunk
            elif self.complete:
                return
            elif self.error is not None:
                raise self.error
            else:
                await self._wait()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.last_data = self._loop.time()
            if self._conn.transport is not None:
                self._conn.transport.resume_reading()

    def finish(self) -> None:
        """Done with the answer: the connection goes back to the pool if it may, else it closes
        (so an upstream still sending sees the request end)."""
        if self._finished:
            return
        self._finished = True
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        reusable = self.complete and self._keep_alive and self._sent and not self._chunks
        self._parser = None   # it holds this answer as its protocol: no cycle left for the collector
        self._conn.done(reusable)


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers, ready to write. Raises ValueError for a CR or LF inside a part
    (which would split it into more lines than it has)."""
    text = "".join([f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n",
                    *[f"{name}: {value}\r\n" for name, value in headers], "\r\n"])
    lines = len(headers) + 3
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a CR or LF inside the request line or a header")
    return text.encode("utf-8", "surrogateescape")   # the client's bytes back as they came
