"""Step 6: send a request to its upstream and the answer back, on one of two paths.

In: the request, its normalised path, the upstream's name and the identity headers to set.
Out: the upstream's answer, with hop-by-hop and client-sent identity headers removed on the way
(headers.py). Most requests take the lean path (lean.py: h1client.py on the keep-alive connections
of pool.py, over TLS for HTTPS upstreams); HEAD, chunked request bodies and WebSocket upgrades take
aiohttp's client (general.py, websocket.py). Both clients get the same headers and hand back the
same answer shape (relay.UpstreamAnswer), their own errors already turned into 502/504 (408 for a
client whose body stalled); relay.py times the upstream and relays the answer, once for both.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config.load import GatewayConfig
from ..errors import BadPath, UpstreamTimeout
from ..logs import AccessNote
from ..steps.cookies import gateway_cookies
from ..steps.identity import Identity
from . import general, lean
from .h1client import TimedOut
from .headers import HeaderPolicy, Peer, is_trusted, request_header_items
from .lifetime import ConnectionWatcher, Lifetime
from .pool import UpstreamPool
from .relay import BUFFER_MAX_BYTES, relay
from .request_body import Body, read_body, send_continue
from .request_id import PICKED
from .seam import Outgoing
from .websocket import is_websocket_upgrade, proxy_websocket

__all__ = ["BUFFER_MAX_BYTES", "Forwarder", "Target"]


class Target(NamedTuple):
    """An upstream's origin (scheme://host:port), base path (no trailing slash), the Host header it
    gets, where the lean path connects to it, and whether over TLS."""

    origin: str
    base_path: str
    host_header: str
    address: tuple[str, int]
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"), URL(url).host_port_subcomponent or "",
                   (parts.hostname or "", parts.port or (443 if tls else 80)), tls)

    def url_for(self, path: str, query: str) -> URL:
        return general.upstream_url(self.origin, self.request_target(path, query))

    def request_target(self, path: str, query: str) -> str:
        """The base path, ``path`` and ``query`` as sent on the request line. The path is already
        normalised: sent as it is, never re-quoted."""
        if not path.startswith("/") or not path.isascii() or not path.isprintable() or _has_delimiter(path):
            raise BadPath()
        return f"{self.base_path}{path}{'?' if query else ''}{query}"



def _has_delimiter(path: str) -> bool:
    return " " in path or "?" in path or "#" in path


class Forwarder:
    """Per upstream, a lean connection pool and an aiohttp session sharing one connection budget
    (``max_connections``); ``forward`` proxies one request. ``lean=False`` sends everything
    through aiohttp (the tests run the forwarding suite both ways)."""

    def __init__(self, cfg: GatewayConfig, watcher: ConnectionWatcher | None = None, *, lean: bool = True) -> None:
        self._cfg = cfg
        self._lean = lean
        self._policy = HeaderPolicy.from_config(cfg.identity, gateway_cookies(cfg.auth), cfg.listen.client_cert_header)
        self._buffer_bytes = cfg.listen.buffer_body
        self._body_timeout_s = cfg.listen.body_timeout
        self._trusted = tuple(cfg.listen.trusted_proxies)
        self._targets = {name: Target.from_url(up.url) for name, up in cfg.upstreams.items()}
        self._timeouts = {name: up.timeout for name, up in cfg.upstreams.items()}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._pools: dict[str, UpstreamPool | None] = {}
        self._closed = False
        self._tls: ssl.SSLContext | None = None   # for HTTPS upstreams: the system's trusted CAs
        self._in_flight = 0
        self._idle: asyncio.Event | None = None   # set by the last request in flight once retired
        # Given on a reload: WebSockets and streams opened before it stay watched.
        self.watcher = watcher if watcher is not None else ConnectionWatcher(leeway_s=cfg.tokens.leeway)

    async def retire(self) -> None:
        """Close once every request in flight here (streams and WebSockets too) has ended: a reload
        swapped in another Forwarder, and what this one started must finish on its connections."""
        if self._in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = self._sessions, {}
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(s.close() for s in sessions.values()),
                             *(p.close() for p in pools.values() if p is not None))

    def _session(self, name: str) -> aiohttp.ClientSession:
        session = self._sessions.get(name)
        if session is None:
            if self._closed:
                raise RuntimeError("the Forwarder is closed")
            tls = self._tls_context() if self._targets[name].tls else None
            session = self._sessions[name] = general.open_session(self._cfg.upstreams[name], tls)
        return session

    def _tls_context(self) -> ssl.SSLContext:
        """One verifying context for both clients (made on first use: it reads SSL_CERT_FILE/_DIR then)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _pool(self, name: str) -> UpstreamPool | None:
        """The upstream's lean pool; None with ``lean=False``."""
        try:
            return self._pools[name]
        except KeyError:
            if self._closed:
                raise RuntimeError("the Forwarder is closed") from None
        target, up = self._targets[name], self._cfg.upstreams[name]
        pool = None
        if self._lean:   # needs the running loop, hence not in __init__
            pool = UpstreamPool(*target.address, limit=up.max_connections, connect_timeout_s=up.connect_timeout,
                                wait_s=max(up.timeout, up.connect_timeout),
                                tls=self._tls_context() if target.tls else None)
        self._pools[name] = pool
        return pool

    async def forward(self, request: web.Request, path: str, upstream: str, identity_headers: Mapping[str, str],
                      identity: Identity | None = None, note: AccessNote | None = None,
                      renewed_nonce: str | None = None) -> web.StreamResponse:
        """Proxy ``request`` to ``upstream`` at ``path`` (+ the original query); ``note`` gets the
        upstream's time to answer, for the access line and the metrics; ``renewed_nonce``: a DPoP nonce
        the answer hands out.

        Raises UpstreamFailed (502) or UpstreamTimeout (504) before the answer starts; after
        that, a failing upstream only cuts the stream short. A WebSocket or streamed answer
        opened with ``identity`` ends when that token expires or is revoked.
        """
        target = self._targets[upstream]
        request_target = target.request_target(path, request.rel_url.raw_query_string)   # BadPath -> 400
        self._in_flight += 1
        try:
            if request.body_exists:
                await send_continue(request)
                body = await read_body(request, self._buffer_bytes, self._body_timeout_s)   # RequestTimeout -> 408
            else:   # most requests: no coroutine spent on a body there is none of
                body = Body(request.content_length)
            headers, request_id = request_header_items(request.headers, self._policy, self._peer_of(request),
                                                       identity_headers, body.length)   # BadRequest -> 400
            request[PICKED] = request_id   # what a refusal from here on answers with (answers.py)
            lifetime = Lifetime(self.watcher, identity)
            pool = self._pool(upstream)
            out = Outgoing(request.method, request_target, target.host_header, headers, body)
            if pool is not None and lean.fits(request, body) and not is_websocket_upgrade(request):
                return await relay(request, lean.send(pool, out, self._timeouts[upstream]), request_id, lifetime,
                                   note, self._body_timeout_s, renewed_nonce)
            return await self._forward_general(request, pool, upstream, target.origin, out, request_id, lifetime, note,
                                               renewed_nonce)
        finally:
            self._in_flight -= 1
            if self._idle is not None and not self._in_flight:
                self._idle.set()

    async def _forward_general(self, request: web.Request, pool: UpstreamPool | None, upstream: str, origin: str,
                               out: Outgoing, request_id: str, lifetime: Lifetime, note: AccessNote | None,
                               renewed_nonce: str | None) -> web.StreamResponse:
        session = self._session(upstream)
        if pool is not None:   # aiohttp's requests count against the lean pool's budget too
            try:
                await pool.acquire_slot()
            except TimedOut as exc:
                raise UpstreamTimeout() from exc
        try:
            if is_websocket_upgrade(request):
                return await proxy_websocket(request, session, general.upstream_url(origin, out.target),
                                             CIMultiDict(out.headers), request_id, lifetime)
            return await relay(request, general.send(session, origin, out), request_id, lifetime, note,
                               self._body_timeout_s, renewed_nonce)
        finally:
            if pool is not None:
                pool.release_slot()

    def _peer_of(self, request: web.Request) -> Peer:
        address = request.remote or None
        return Peer(address, request.scheme, is_trusted(address, self._trusted))
