"""Which headers cross the gateway, both ways: hop-by-hop ones dropped, the client's identity
headers dropped, X-Forwarded-* and X-Request-Id set, the gateway's identity headers added last.

Plain values in and out (header pairs, ``Peer``, ``HeaderPolicy``), so forward.py's two upstream
clients (aiohttp's and h1client's) send and relay exactly the same headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from multidict import MultiMapping

from .config import IdentityConfig
from .request_id import REQUEST_ID, pick_request_id

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


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The header names that ``Connection`` header values list (lower-cased): hop-by-hop for this hop only."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def request_header_items(headers: MultiMapping[str], policy: HeaderPolicy, peer: Peer,
                         identity_headers: Mapping[str, str]) -> tuple[list[tuple[str, str]], str]:
    """The headers the upstream receives, as pairs: the client's, cleaned, then the gateway's own on
    top; and the X-Request-Id among them."""
    drop = policy.trusted_drop if peer.trusted else policy.untrusted_drop
    if CONNECTION in headers:
        drop = drop | connection_tokens(headers.getall(CONNECTION))
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
    request_id = pick_request_id(request_ids)
    kept.append((REQUEST_ID, request_id))
    # Identity is never what the client said: its header names are in ``drop``, and the config
    # refuses an identity header named like one the gateway sets above (config._RESERVED_HEADERS).
    kept.extend(identity_headers.items())
    return kept, request_id


_REWRITTEN = frozenset({"x-forwarded-for", "x-request-id", "x-forwarded-proto", "x-forwarded-host"})


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
