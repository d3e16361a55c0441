"""Rate limits of the auth endpoints: (bucket, key) -> allowed, or RateLimited (429 + Retry-After).

Counted in the store (``Store.hit``), so every instance of a fleet shares the same windows.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from ..errors import DependencyDown, RateLimited
from ..forward.headers import X_FORWARDED_FOR, Network, is_trusted
from ..store.base import Store, StoreUnavailable

RETRY_AFTER = "Retry-After"
IPV6_PREFIX = 64   # one IPv6 client usually holds a whole /64: count it as one address


class RateLimiter:
    """Fixed windows per bucket, counted in the store. ``rate`` is (events, window_s) from the config."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def hit(self, name: str, key: str, rate: tuple[int, int]) -> None:
        """Count one event of ``key`` in limit ``name``. Raises RateLimited once over the limit (with
        ``Retry-After`` in whole seconds, at least 1), DependencyDown when the store cannot count."""
        limit, window_s = rate
        try:
            wait_s = await self._store.hit(bucket_name(name, key), limit, window_s, self._clock())
        except StoreUnavailable as exc:
            raise DependencyDown("the rate limit store is unavailable") from exc
        if wait_s > 0:
            raise RateLimited(f"too many {name} attempts; try again later",
                              headers={RETRY_AFTER: str(max(1, math.ceil(wait_s)))})


def bucket_name(name: str, key: str) -> str:
    """``name:<digest of key>``: a client-chosen key (a username) never reaches the store's key space
    as written (no braces that would move a Redis hash tag, no unbounded length)."""
    return f"{name}:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def client_address(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """Who is asking: the peer address, or, when the peer is a trusted proxy, the nearest address in
    its X-Forwarded-For that is not a trusted proxy itself. IPv6 addresses count per /64."""
    address = request.remote or ""
    if is_trusted(address, trusted_proxies):
        chain = [hop.strip() for value in request.headers.getall(X_FORWARDED_FOR, [])
                 for hop in value.split(",") if hop.strip()]
        # Walk from the right: only the hops our own proxies appended can be believed.
        for hop in reversed(chain):
            address = hop
            if not is_trusted(hop, trusted_proxies):
                break
    return _client_key(address)


def _client_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
