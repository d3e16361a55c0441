"""Step 6: stream a request to its upstream and the answer back (WebSocket upgrades: websocket.py).

In: the request, its normalised path, the upstream's name and the identity headers to set.
Out: the upstream's answer, with hop-by-hop and client-sent identity headers removed on the way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from .config import GatewayConfig, IdentityConfig, UpstreamConfig
from .errors import BadPath, UpstreamFailed, UpstreamTimeout
from .identity import Identity
from .lifetime import ConnectionWatcher, Lifetime
from .logs import AccessNote
from .request_id import REQUEST_ID, pick_request_id
from .websocket import is_websocket_upgrade, proxy_websocket

log = logging.getLogger("tokengate.forward")

X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"
FORWARDED = "Forwarded"
CONNECTION = "Connection"
HOST = "Host"
# RFC 9110 7.6.1 plus the legacy ones every proxy drops; all lower-case for set lookups.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
FORWARDING = frozenset(h.lower() for h in (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, FORWARDED))
# Host: the upstream gets its own (aiohttp sets it from the URL). Expect: the gateway answered it already.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect"}
# Added by aiohttp's client unless skipped; a proxy must not invent them.
_CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# An answer with a Content-Length up to this size is read whole and sent in one write (headers and
# body together); a larger one, or one without a length (chunked, SSE), is streamed as it arrives.
BUFFER_MAX_BYTES = 256 * 1024
_NOT_RELAYED = HOP_BY_HOP | {REQUEST_ID.lower()}   # the answer carries the gateway's request id

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """What the gateway drops from every client request, for trusted and other peers; built once."""

    trusted_drop: frozenset[str]
    untrusted_drop: frozenset[str]   # + X-Forwarded-*, Forwarded: only a trusted proxy may say who the client is

    @classmethod
    def from_config(cls, identity: IdentityConfig) -> HeaderPolicy:
        drop = _NOT_FORWARDED | identity.header_names
        if identity.strip_authorization:
            drop |= {"authorization"}
        return cls(frozenset(drop), frozenset(drop | FORWARDING))


class Peer(NamedTuple):
    """The hop a request came from: its address, the scheme it used, whether it may set X-Forwarded-*."""

    address: str | None
    scheme: str
    trusted: bool


def connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """The header names the ``Connection`` headers list (lower-cased): hop-by-hop for this hop only."""
    if CONNECTION not in headers:
        return frozenset()
    return frozenset(t.strip().lower() for v in headers.getall(CONNECTION) for t in v.split(",") if t.strip())


def filter_request_headers(headers: MultiMapping[str], policy: HeaderPolicy, peer: Peer,
                           identity_headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers the upstream receives: the client's, cleaned, then the gateway's own on top."""
    drop = policy.trusted_drop if peer.trusted else policy.untrusted_drop
    if named := connection_tokens(headers):
        drop = drop | named
    kept: list[tuple[str, str]] = []
    chain: list[str] = []
    request_ids: list[str] = []
    has_proto = has_host = False
    for name, value in headers.items():   # one pass: this runs on every proxied request
        lowered = name.lower()
        if lowered in drop:
            continue
        if lowered in _REWRITTEN:
            if lowered == "x-forwarded-for":
                chain.append(value)
                continue
            if lowered == "x-request-id":
                request_ids.append(value)
                continue
            has_proto = has_proto or lowered == "x-forwarded-proto"
            has_host = has_host or lowered == "x-forwarded-host"
        kept.append((name, value))
    # The gateway's own headers go in after the removal, so no Connection header can take them out.
    if peer.address:
        chain.append(peer.address)
    if chain:
        kept.append((X_FORWARDED_FOR, ", ".join(chain)))
    if not has_proto:
        kept.append((X_FORWARDED_PROTO, peer.scheme))
    if not has_host and (client_host := headers.get(HOST)):
        kept.append((X_FORWARDED_HOST, client_host))
    kept.append((REQUEST_ID, pick_request_id(request_ids)))
    # Identity is never what the client said: its header names are in ``drop``, and the config
    # refuses an identity header named like one the gateway sets above (config._RESERVED_HEADERS).
    kept.extend(identity_headers.items())
    return CIMultiDict(kept)


_REWRITTEN = frozenset({"x-forwarded-for", "x-request-id", "x-forwarded-proto", "x-forwarded-host"})


def filter_response_headers(headers: MultiMapping[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones (repeated ones such as Set-Cookie kept)."""
    return CIMultiDict(response_header_items(headers, HOP_BY_HOP))


def response_header_items(headers: MultiMapping[str], drop: frozenset[str]) -> list[tuple[str, str]]:
    """The upstream's response headers minus ``drop`` and whatever its Connection header names."""
    if named := connection_tokens(headers):
        drop = drop | named
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_trusted(address: str | None, networks: Sequence[Network]) -> bool:
    """Is this peer address inside one of the trusted proxy networks?"""
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped   # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in networks)


class Target(NamedTuple):
    """An upstream's origin (scheme://host:port) and base path (no trailing slash)."""

    origin: str
    base_path: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))

    def url_for(self, path: str, query: str) -> URL:
        # The path is already normalised: send it as is, never re-quoted.
        if not path.startswith("/") or not path.isascii() or not path.isprintable() or _has_delimiter(path):
            raise BadPath()
        return URL(f"{self.origin}{self.base_path}{path}{'?' if query else ''}{query}", encoded=True)


def _has_delimiter(path: str) -> bool:
    return " " in path or "?" in path or "#" in path


def _timeout(up: UpstreamConfig) -> aiohttp.ClientTimeout:
    # No total: a stream may last as long as it keeps sending. sock_read starts once the request
    # body is sent and restarts on every read, so it bounds both the wait for the answer's
    # headers and each silence inside the body. connect also bounds the wait for a pool slot.
    return aiohttp.ClientTimeout(total=None, connect=max(up.timeout, up.connect_timeout),
                                 sock_connect=up.connect_timeout, sock_read=up.timeout)


class _VerbatimRequest(aiohttp.ClientRequest):
    """Sends the headers filter_request_headers built, as they are: aiohttp invents no Accept,
    Accept-Encoding, User-Agent or Content-Type (``skip_auto_headers`` without rebuilding the skip
    list on every request), and adds only Host, which the filter always removes."""

    _SKIPPED: CIMultiDict[None] = CIMultiDict((name, None) for name in _CLIENT_AUTO_HEADERS)

    def update_headers(self, headers: object) -> None:
        assert isinstance(headers, CIMultiDict) and HOST not in headers
        self.headers = CIMultiDict(((HOST, self.url.host_port_subcomponent),))
        self.headers.extend(headers)   # one copy in C, instead of a Python loop over every header

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = self._SKIPPED


class Forwarder:
    """One pooled client session per upstream; ``forward`` proxies one request."""

    def __init__(self, cfg: GatewayConfig, watcher: ConnectionWatcher | None = None) -> None:
        self._cfg = cfg
        self._policy = HeaderPolicy.from_config(cfg.identity)
        self._trusted = tuple(cfg.listen.trusted_proxies)
        self._targets = {name: Target.from_url(up.url) for name, up in cfg.upstreams.items()}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closed = False
        self._in_flight = 0
        self._idle: asyncio.Event | None = None   # set by the last request in flight once retired
        # Given on a reload: WebSockets and streams opened before it stay watched.
        self.watcher = watcher if watcher is not None else ConnectionWatcher(leeway_s=cfg.tokens.leeway)

    async def start(self) -> None:
        """Open every upstream's session now (optional: ``forward`` opens them on first use)."""
        for name in self._cfg.upstreams:
            self._session(name)

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
        await asyncio.gather(*(s.close() for s in sessions.values()))

    def _session(self, name: str) -> aiohttp.ClientSession:
        session = self._sessions.get(name)
        if session is None:
            if self._closed:
                raise RuntimeError("the Forwarder is closed")
            up = self._cfg.upstreams[name]
            # Needs the running loop, hence not in __init__.
            session = self._sessions[name] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=up.max_connections), timeout=_timeout(up),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                request_class=_VerbatimRequest, trust_env=False)
        return session

    async def forward(self, request: web.Request, path: str, upstream: str, identity_headers: Mapping[str, str],
                      identity: Identity | None = None, note: AccessNote | None = None) -> web.StreamResponse:
        """Proxy ``request`` to ``upstream`` at ``path`` (+ the original query); ``note`` gets the
        upstream's time to answer, for the access line and the metrics.

        Raises UpstreamFailed (502) or UpstreamTimeout (504) before the answer starts; after
        that, a failing upstream only cuts the stream short. A WebSocket or streamed answer
        opened with ``identity`` ends when that token expires or is revoked.
        """
        session = self._session(upstream)
        url = self._targets[upstream].url_for(path, request.rel_url.raw_query_string)
        peer = self._peer_of(request)
        headers = filter_request_headers(request.headers, self._policy, peer, identity_headers)
        lifetime = Lifetime(self.watcher, identity)
        self._in_flight += 1
        try:
            if is_websocket_upgrade(request):
                return await proxy_websocket(request, session, url, headers, {REQUEST_ID: headers[REQUEST_ID]},
                                             lifetime)
            sent_at = time.perf_counter()
            resp = await _send(session, request, url, headers)
            if note is not None:
                note.upstream_ms = (time.perf_counter() - sent_at) * 1000   # until the answer's headers
            return await _relay(request, resp, headers[REQUEST_ID], lifetime)
        finally:
            self._in_flight -= 1
            if self._idle is not None and not self._in_flight:
                self._idle.set()

    def _peer_of(self, request: web.Request) -> Peer:
        address = request.remote or None
        return Peer(address, request.scheme, is_trusted(address, self._trusted))


async def _send(session: aiohttp.ClientSession, request: web.Request, url: URL,
                headers: CIMultiDict[str]) -> aiohttp.ClientResponse:
    body = request.content if request.body_exists else None   # streamed, never read whole
    echo = {REQUEST_ID: headers[REQUEST_ID]}
    try:
        return await session.request(request.method, url, headers=headers, data=body, allow_redirects=False)
    except asyncio.TimeoutError as exc:   # first: aiohttp's timeout errors are ClientErrors too
        raise UpstreamTimeout(headers=echo) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailed(headers=echo) from exc


def _is_small(request: web.Request, resp: aiohttp.ClientResponse) -> bool:
    # HEAD, 204 and 304 answers carry a Content-Length but no body: they keep the streaming path,
    # which sends the upstream's headers as they are.
    length = resp.content_length
    return (length is not None and length <= BUFFER_MAX_BYTES and request.method != "HEAD"
            and resp.status not in (204, 304) and resp.status >= 200)


async def _read_whole(request: web.Request, resp: aiohttp.ClientResponse, request_id: str) -> web.Response:
    """The answer in one piece; nothing is sent to the client unless the whole body arrived."""
    try:
        body = await resp.read()
    except asyncio.TimeoutError as exc:
        raise UpstreamTimeout(headers={REQUEST_ID: request_id}) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailed(headers={REQUEST_ID: request_id}) from exc
    finally:
        resp.release()
    headers = response_header_items(resp.headers, _NOT_RELAYED)
    headers.append((REQUEST_ID, request_id))
    return web.Response(status=resp.status, reason=resp.reason, headers=headers, body=body)


async def _relay(request: web.Request, resp: aiohttp.ClientResponse, request_id: str,
                 lifetime: Lifetime) -> web.StreamResponse:
    if _is_small(request, resp):
        return await _read_whole(request, resp, request_id)
    complete = False
    try:
        out = web.StreamResponse(status=resp.status, reason=resp.reason,
                                 headers=filter_response_headers(resp.headers))
        out.headers[REQUEST_ID] = request_id
        if resp.content_length is None:   # a stream (chunked, SSE): it may outlive the token
            with lifetime.cancel_on_end():
                complete = await _copy_body(request, resp, out)
        else:
            complete = await _copy_body(request, resp, out)
        return out
    finally:
        # Release keeps the connection for reuse; anything unfinished (an error, the client gone,
        # this task cancelled) closes it so the upstream sees the request end.
        if complete:
            resp.release()
        else:
            resp.close()


async def _copy_body(request: web.Request, resp: aiohttp.ClientResponse, out: web.StreamResponse) -> bool:
    try:
        await out.prepare(request)
        async for chunk in resp.content.iter_any():   # each chunk as it arrives: SSE stays live
            await out.write(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
        # The status line is gone already; cutting the connection is the only honest signal left
        # (a clean end would pass a truncated body off as complete).
        log.info("stream aborted", extra={"method": request.method, "error": type(exc).__name__})
        if request.transport is not None:
            request.transport.close()
        return False
    return True
