"""A lean HTTP/1.1 client for the common proxied request (forward.py decides which ones).

aiohttp's client costs about 100 µs of CPU per request on this stack, more than everything else
the gateway does for a cached token. This one writes a request head built once and lets llhttp
(httptools) parse the answer, on keep-alive connections pooled per upstream.

In: a request head (bytes) and a body held whole. Out: an ``Answer`` whose body is read whole or
streamed. ``UpstreamPool.send`` raises ``Unreachable`` or ``TimedOut`` before the answer's head;
a failure inside the body raises them from ``read`` or ``chunks``.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools

MAX_HEAD_BYTES = 64 * 1024    # an answer's status line and headers together
MAX_FIELD_BYTES = 8190        # one header line, and
MAX_HEADERS = 128             # as many headers as aiohttp's client (and the clients behind) accept
IDLE_S = 15.0                 # a pooled connection unused this long is closed (aiohttp's keepalive_timeout)
PAUSE_BYTES = 256 * 1024      # a streamed body buffered beyond this stops reading from the upstream
# RFC 9110 9.2.2: a request that may be sent twice; one that met a dead pooled connection is.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream could not be reached, broke the protocol or hung up."""


class Unreachable(UpstreamError):
    pass


class TimedOut(UpstreamError):
    pass


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")   # as aiohttp's parser does


class Answer:
    """One request's answer on one connection; also the parser's callbacks (``on_*``)."""

    __slots__ = ("_conn", "_loop", "_parser", "_timeout_s", "status", "reason", "_reason", "_raw_headers", "headers",
                 "content_length", "_until_eof", "_head_bytes", "_fed_before_head", "_chunks", "_buffered",
                 "_paused", "_pausable", "head_done", "complete", "received", "_keep_alive", "error", "_waiter",
                 "last_data", "_finished")

    def __init__(self, conn: _Conn, timeout_s: float) -> None:
        self._conn = conn
        self._loop = conn.loop
        self._parser = httptools.HttpResponseParser(self)
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
        self.last_data = self._loop.time()   # the upstream's silence is timed from here (_Conn's timer)
        self._finished = False

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
        status = self._parser.get_status_code()
        if 100 <= status < 200:   # 100 Continue, 103 Early Hints: the answer is still to come
            self._raw_headers.clear()
            self._reason = b""
            return
        self.status, self.reason = status, _decode(self._reason)
        chunked = False
        headers = self.headers
        for raw_name, raw_value in self._raw_headers:
            name, value = _decode(raw_name), _decode(raw_value)
            headers.append((name, value))
            lowered = name.lower()
            if lowered == "content-length":
                self.content_length = int(value)   # llhttp let through only digits, and one value
            elif lowered == "transfer-encoding":
                chunked = chunked or "chunked" in value.lower()
        self._raw_headers = []
        self._until_eof = self.content_length is None and not chunked and status not in (204, 304)
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
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- what the connection tells it ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.received = True
        self.last_data = self._loop.time()
        if self.complete:   # bytes after a whole answer: nothing was asked for
            self.fail(UpstreamError("bytes after the answer"))
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(UpstreamError(f"malformed answer: {type(exc).__name__}"))
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

    def silence_deadline(self) -> float | None:
        """When the upstream's silence must be checked again; None once it was too long (the
        exchange failed with TimedOut). Waiting on a client that is behind does not count."""
        now = self._loop.time()
        if self.complete or self.error is not None or self._paused:
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
        reusable = self.complete and self._keep_alive and not self._chunks
        self._conn.done(reusable)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; it passes what it reads to the answer in progress."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.idle_since = 0.0
        self.served = 0
        self.holds_slot = True   # each open connection holds one of the pool's slots
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None   # armed while an answer is in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is not an asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:   # an idle connection that talks: nothing can be trusted on it
            self.abort()
            return
        self.answer.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.lost(self)
        if self.answer is not None:
            self.answer.ended(exc)

    def send(self, head: bytes, body: bytes, timeout_s: float) -> Answer:
        assert self.transport is not None and self.answer is None
        self.answer = answer = Answer(self, timeout_s)
        self.transport.write(head + body if body else head)
        self.served += 1
        if self._timer is None:   # one timer for the connection's life, not one per request
            self._timer = self.loop.call_at(answer.last_data + timeout_s, self._check_silence)
        return answer

    def _check_silence(self) -> None:
        self._timer = None
        if self.answer is not None and not self.closed:   # idle: the next request arms it again
            deadline = self.answer.silence_deadline()
            if deadline is not None:
                self._timer = self.loop.call_at(deadline, self._check_silence)

    def done(self, reusable: bool) -> None:
        self.answer = None
        if reusable and not self.closed:
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.pool.lost(self)


class UpstreamPool:
    """Keep-alive connections to one plain-HTTP upstream, and the upstream's connection budget.

    ``limit`` bounds this pool's open connections plus the requests in flight that go through
    aiohttp instead (``slot``); a request over the budget waits up to ``wait_s`` for one.
    """

    def __init__(self, host: str, port: int, *, limit: int, connect_timeout_s: float, wait_s: float,
                 idle_s: float = IDLE_S) -> None:
        self.loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        self._limit = limit
        self._used = 0
        self._connect_timeout_s = connect_timeout_s
        self._wait_s = wait_s
        self._idle_s = idle_s
        self._idle: list[_Conn] = []
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def slots_used(self) -> int:
        """Open connections plus the slots held through ``acquire_slot``."""
        return self._used

    async def send(self, method: str, head: bytes, body: bytes, timeout_s: float) -> Answer:
        """Send the request and wait for its answer's head. A pooled connection the upstream
        closed meanwhile is retried once on another, for a request that may be sent twice."""
        retry = method in IDEMPOTENT
        while True:
            conn = self._take_idle() or await self._acquire()
            if conn.closed:   # it closed while being handed over
                continue
            answer = conn.send(head, body, timeout_s)
            try:
                await answer.wait_head()
                return answer
            except Unreachable:
                answer.finish()
                if not (retry and conn.served > 1 and not answer.received):
                    raise
                retry = False
            except BaseException:
                answer.finish()
                raise

    async def acquire_slot(self) -> None:
        """Hold one slot of the budget (a request aiohttp carries); ``release_slot`` gives it back."""
        if self._used < self._limit:
            self._used += 1
            return
        if self._idle:   # an idle connection gives its slot up
            self._give_up_slot(self._idle.pop(0))
            return
        conn = await self._wait_turn()
        if conn is not None:
            self._give_up_slot(conn)

    def release_slot(self) -> None:
        self._free_slot()

    def put_back(self, conn: _Conn) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self._closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = self.loop.call_later(self._idle_s, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for ``idle_s``; runs while any connection is idle."""
        self._reaper = None
        cutoff = self.loop.time() - self._idle_s
        for conn in [c for c in self._idle if c.idle_since <= cutoff]:
            conn.abort()
        if self._idle:
            self._reaper = self.loop.call_at(min(c.idle_since for c in self._idle) + self._idle_s, self._reap)

    def lost(self, conn: _Conn) -> None:
        if conn.holds_slot:
            conn.holds_slot = False
            self._free_slot()
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        """Close the idle connections now; a busy one closes when its answer is done."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for conn in list(self._idle):
            conn.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unreachable("the gateway is shutting down"))

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()   # the most recently used: the least likely to have been closed
            if not conn.closed and self.loop.time() - conn.idle_since < self._idle_s:
                return conn
            conn.abort()
        return None

    async def _acquire(self) -> _Conn:
        if self._closed:
            raise Unreachable("the gateway is shutting down")
        if self._used < self._limit:
            self._used += 1
        else:
            conn = await self._wait_turn()
            if conn is not None:
                return conn
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    async def _wait_turn(self) -> _Conn | None:
        """Wait for a connection put back (returned) or a slot freed (None: it is the caller's)."""
        waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._wait_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()   # handed over just as this wait ended: give it back
                if got is None:
                    self._free_slot()
                else:
                    self.put_back(got)
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise TimedOut("no connection to the upstream came free in time") from exc
            raise

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await self.loop.create_connection(lambda: _Conn(self), self._host, self._port)
        except TimeoutError as exc:
            raise TimedOut("connecting to the upstream timed out") from exc
        except OSError as exc:
            raise Unreachable(f"cannot connect to the upstream: {exc.strerror or type(exc).__name__}") from exc
        return conn

    def _give_up_slot(self, conn: _Conn) -> None:
        conn.holds_slot = False   # its slot now belongs to the caller
        conn.abort()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)   # the slot passes to the waiter as it is
                return
        self._used -= 1


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers, ready to write. Raises ValueError for a CR or LF inside a part
    (which would split it into more lines than it has)."""
    text = "".join([f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n",
                    *[f"{name}: {value}\r\n" for name, value in headers], "\r\n"])
    lines = len(headers) + 3
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a CR or LF inside the request line or a header")
    return text.encode("utf-8", "surrogateescape")   # the client's bytes back as they came
