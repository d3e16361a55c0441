"""Keep-alive connections to one upstream (TLS for HTTPS) and the upstream's connection budget, for
h1client's exchanges: a request takes an idle connection or opens one within the budget, and its
``Answer.finish`` puts the connection back (or closes it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

from .h1client import Answer, TimedOut, Unreachable

IDLE_S = 15.0   # a pooled connection unused this long is closed (aiohttp's keepalive_timeout)
# RFC 9110 9.2.2: a request that may be sent twice; one that met a dead pooled connection is.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class Connection(asyncio.Protocol):
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
        self._drained: asyncio.Future[None] | None = None   # set while the socket's buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is not an asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def usable(self) -> bool:
        """Open, and not closing with its connection_lost still to come."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if self.answer is None:   # an idle connection that talks: nothing can be trusted on it
            self.abort()
            return
        self.answer.feed(data)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is full (returns at once when closed)."""
        if self._drained is not None:
            await self._drained

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.lost(self)
        if self.answer is not None:
            self.answer.ended(exc)

    def send(self, head: bytes, timeout_s: float) -> Answer:
        assert self.transport is not None and self.answer is None
        self.answer = answer = Answer(self, timeout_s)
        self.served += 1
        try:
            self.transport.write(head)
        except RuntimeError:   # uvloop: the socket closed and connection_lost is still to come
            answer.fail(Unreachable("the upstream closed the connection"))
            return answer
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
    """Keep-alive connections to one upstream, and the upstream's connection budget.

    ``limit`` bounds this pool's open connections plus the requests in flight that go through
    aiohttp instead (``acquire_slot``); a request over the budget waits up to ``wait_s`` for one.
    """

    def __init__(self, host: str, port: int, *, limit: int, connect_timeout_s: float, wait_s: float,
                 idle_s: float = IDLE_S, tls: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        self._tls = tls   # HTTPS: verified against the context's CAs, for ``host``
        self._limit = limit
        self._used = 0
        self._connect_timeout_s = connect_timeout_s
        self._wait_s = wait_s
        self._idle_s = idle_s
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def slots_used(self) -> int:
        """Open connections plus the slots held through ``acquire_slot``."""
        return self._used

    async def send(self, method: str, head: bytes, body: AsyncIterator[bytes] | None, timeout_s: float) -> Answer:
        """Send the request (``body``: streamed after the head, as it comes) and wait for its
        answer's head. A pooled connection the upstream closed meanwhile is retried once on
        another, for a request without a body that may be sent twice."""
        retry = body is None and method in IDEMPOTENT
        while True:
            conn = self._take_idle() or await self._acquire()
            if not conn.usable:   # it closed while being handed over
                conn.abort()
                continue
            answer = conn.send(head, timeout_s)
            if body is not None:
                answer.send_body(body)
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

    def put_back(self, conn: Connection) -> None:
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

    def lost(self, conn: Connection) -> None:
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

    def _take_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()   # the most recently used: the least likely to have been closed
            if conn.usable and self.loop.time() - conn.idle_since < self._idle_s:
                return conn
            conn.abort()
        return None

    async def _acquire(self) -> Connection:
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

    async def _wait_turn(self) -> Connection | None:
        """Wait for a connection put back (returned) or a slot freed (None: it is the caller's)."""
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
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

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), self._host, self._port, ssl=self._tls,
                    ssl_handshake_timeout=self._connect_timeout_s if self._tls is not None else None)
        except TimeoutError as exc:
            raise TimedOut("connecting to the upstream timed out") from exc
        except OSError as exc:   # ssl.SSLError (a certificate that cannot be verified ...) included
            raise Unreachable(f"cannot connect to the upstream: {exc.strerror or type(exc).__name__}") from exc
        return conn

    def _give_up_slot(self, conn: Connection) -> None:
        conn.holds_slot = False   # its slot now belongs to the caller
        conn.abort()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)   # the slot passes to the waiter as it is
                return
        self._used -= 1
