"""Which headers cross the gateway, both ways: the one place that decides the upstream request's
head (framing written by the gateway, hop-by-hop and client-sent identity/forwarding headers
dropped in every spelling, the gateway's cookies removed, X-Forwarded-* and X-Request-Id set, the
gateway's identity headers added last) and what of an answer is relayed.

Plain values in and out (header pairs, ``Peer``, ``HeaderPolicy``), so forward/forwarder.py's two upstream
clients (aiohttp's and h1client's) send and relay exactly the same headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from multidict import MultiMapping

from ..config.load import IdentityConfig
from ..errors import BadRequest, UnknownTransferCoding
from .request_id import REQUEST_ID, pick_request_id

X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_HOST = "X-Forwarded-Host"
FORWARDED = "Forwarded"
CONNECTION = "Connection"
CONTENT_LENGTH = "Content-Length"
COOKIE = "Cookie"
HOST = "Host"
# RFC 9110 7.6.1 plus the legacy ones every proxy drops; all lower-case for set lookups.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
# The upstream request's framing is the gateway's own, written from what it parsed (RFC 9112 6.3, 11.2):
# a client's copy is never sent on, so no client can make the upstream read a body differently.
FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection", "upgrade", "te"})
# Headers that state a client address, a scheme, a port, a prefix or an original URL/method: only a
# trusted proxy may say these; the gateway sets its own X-Forwarded-For/-Proto/-Host.
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                        "x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-method", "x-real-ip", "x-original-url",
                        "x-original-uri", "x-original-method", "x-rewrite-url"})
_FORWARDING_PREFIXES = ("x-forwarded-", "x-original-")   # and any other spelling of the same idea
# Expect: the gateway answered it already (100 Continue or 417).
_NOT_FORWARDED = HOP_BY_HOP | FRAMING | {"expect"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """What the gateway drops from every client request, for trusted and other peers; built once.

    Every name here is in one folded form: lower case, and ``_`` read as ``-`` for the names the
    gateway owns (``X_User_Id`` is ``X-User-Id`` to a CGI/WSGI upstream)."""

    trusted_drop: frozenset[str]
    untrusted_drop: frozenset[str]   # + FORWARDING and the client certificate header: only a trusted
                                     # proxy may say who the client is
    owned: frozenset[str]            # what a Connection header may never name; no other spelling of it passes
    gateway_cookies: frozenset[str]  # the gateway's own cookies, never forwarded in Cookie

    @classmethod
    def from_config(cls, identity: IdentityConfig, gateway_cookies: Iterable[str] = (),
                    client_cert_header: str | None = None) -> HeaderPolicy:
        """``client_cert_header`` (listen's): like X-Forwarded-*, only a trusted proxy may state it."""
        drop = _NOT_FORWARDED | {fold(name) for name in identity.header_names}
        if identity.strip_authorization:   # and the DPoP proof that came with it: spent, and of no use alone
            drop |= {"authorization", "dpop"}
        proxies_only = FORWARDING | ({fold(client_cert_header)} if client_cert_header else set())
        owned = drop | proxies_only | {REQUEST_ID.lower()}
        return cls(frozenset(drop), frozenset(drop | proxies_only), frozenset(owned), frozenset(gateway_cookies))


class Peer(NamedTuple):
    """The hop a request came from: its address, the scheme it used, whether it may set X-Forwarded-*."""

    address: str | None
    scheme: str
    trusted: bool


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The header names that ``Connection`` header values list (lower-cased): hop-by-hop for this hop only."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def fold(name: str) -> str:
    """A header name in the one form every comparison with a reserved or configured name uses."""
    return name.lower().replace("_", "-")


def request_header_items(headers: MultiMapping[str], policy: HeaderPolicy, peer: Peer,
                         identity_headers: Mapping[str, str],
                         body_length: int | None = None) -> tuple[list[tuple[str, str]], str]:
    """The one decision of what the upstream request's headers are (both upstream clients send
    exactly these; the lean one writes Host first, aiohttp's from the URL): the client's headers,
    cleaned, then the gateway's own on top; and the X-Request-Id among them.

    ``body_length``: the length of the body the gateway read or will stream, written as the only
    Content-Length (None: no body, or one the upstream client frames as chunked). Raises
    BadRequest for a request with more than one Host (RFC 9112 3.2), UnknownTransferCoding (501)
    for a transfer coding other than chunked."""
    trusted = peer.trusted
    drop = policy.trusted_drop if trusted else policy.untrusted_drop
    if CONNECTION in headers:
        # A Connection header may name only ordinary end-to-end headers: never framing, nor what the
        # gateway sets or decides (RFC 9110 7.6.1 lets a proxy ignore such names).
        drop = drop | {fold(t) for t in connection_tokens(headers.getall(CONNECTION))} - policy.owned
    kept: list[tuple[str, str]] = []
    chain: list[str] = []
    request_ids: list[str] = []
    has_proto = has_host = False
    hosts = 0
    for name, value in headers.items():   # one pass: this runs on every proxied request
        lowered = name.lower()
        if "_" in lowered:
            lowered = lowered.replace("_", "-")   # fold(name)
            if lowered in policy.owned:
                continue   # another spelling of a header the gateway owns: never trusted, never passed on
        if lowered in drop:
            if lowered == "host":
                hosts += 1
            elif lowered == "transfer-encoding" and value.strip().lower() != "chunked":
                raise UnknownTransferCoding()
            continue
        if lowered in _REWRITTEN:
            if lowered == "x-forwarded-for":
                chain.append(value)
                continue
            if lowered == "x-request-id":
                request_ids.append(value)
                continue
            if lowered == "cookie":
                if value := without_cookies(value, policy.gateway_cookies):
                    kept.append((name, value))
                continue
            has_proto = has_proto or lowered == "x-forwarded-proto"
            has_host = has_host or lowered == "x-forwarded-host"
        elif not trusted and lowered.startswith(_FORWARDING_PREFIXES):
            continue
        kept.append((name, value))
    if hosts > 1:
        raise BadRequest("more than one Host header")
    # The gateway's own headers go in after the removal, so no Connection header can take them out.
    if peer.address:
        chain.append(peer.address)
    if chain:
        kept.append((X_FORWARDED_FOR, ", ".join(chain)))
    if not has_proto:
        kept.append((X_FORWARDED_PROTO, peer.scheme))
    if not has_host and (client_host := headers.get(HOST)):
        kept.append((X_FORWARDED_HOST, client_host))
    request_id = pick_request_id(request_ids)
    kept.append((REQUEST_ID, request_id))
    if body_length is not None:
        kept.append((CONTENT_LENGTH, str(body_length)))
    # Identity is never what the client said: its header names are in ``drop``, and the config
    # refuses an identity header named like one the gateway sets above (config._RESERVED_HEADERS).
    kept.extend(identity_headers.items())
    return kept, request_id


_REWRITTEN = frozenset({"x-forwarded-for", "x-request-id", "x-forwarded-proto", "x-forwarded-host", "cookie"})


def without_cookies(value: str, names: frozenset[str]) -> str:
    """A Cookie header value without the cookies called ``names`` (RFC 6265 5.4: ``a=b; c=d``);
    "" when none is left. The gateway's own cookies hold the caller's credentials: an upstream
    never needs them, and must never be able to replay them."""
    if not any(name in value for name in names):
        return value
    pairs = [pair for pair in value.split(";") if pair.strip() and pair.partition("=")[0].strip() not in names]
    return "; ".join(pair.strip() for pair in pairs)


def response_header_items(items: Iterable[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    """The upstream's response headers minus ``drop`` (which holds "connection") and whatever its
    Connection headers name; repeated ones such as Set-Cookie kept."""
    kept: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in items:
        lowered = name.lower()
        if lowered in drop:
            if lowered == "connection":
                listed.append(value)
            continue
        kept.append((name, value))
    if listed and (named := connection_tokens(listed)):
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    return kept


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
