"""The store: one interface (base.Store), two backends. ``open_store(cfg)`` turns store.url into one.

memory:// embedded; redis://, rediss://, unix:// one server; redis+sentinel://h1:p1,h2:p2/<service> the
Sentinel master; redis+cluster://h1:p1,h2:p2 a Cluster; the rediss+ variants use TLS.
Only the Redis backend's modules (redis/) import redis-py, and only when a Redis URL is opened.

May import: config and errors; nothing above them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ..errors import DependencyDown
from .base import RefreshRecord, Revocation, RevocationFeed, Rotation, SessionInfo, Store, StoreUnavailable, UserRecord
from .memory import MemoryStore
from .redis.url import RedisTarget, parse_redis_url

if TYPE_CHECKING:
    from ..config.load import StoreConfig

__all__ = ["MemoryStore", "RedisTarget", "store_reachable", "RefreshRecord", "Revocation", "RevocationFeed", "Rotation",
           "SessionInfo", "Store", "StoreUnavailable", "UserRecord", "open_store", "parse_redis_url"]

@contextlib.contextmanager
def store_reachable(what: str = "the session store") -> Iterator[None]:
    """Inside, StoreUnavailable becomes DependencyDown (503): HTTP clients never see the store's URL."""
    try:
        yield
    except StoreUnavailable as exc:
        raise DependencyDown(f"{what} is unavailable") from exc


async def open_store(cfg: StoreConfig) -> Store:
    """The store that ``cfg.url`` names. Connects lazily: with Redis down, calls raise StoreUnavailable
    until it answers. Raises ValueError for a URL that names no store (the message has no password)."""
    if urlsplit(cfg.url).scheme == "memory":
        return MemoryStore()
    from .redis.client import build_client
    from .redis.store import RedisStore  # redis-py loads only when a Redis store is configured

    target = parse_redis_url(cfg.url)
    client, on_close = build_client(target, retries=1)
    subscriber, sub_close = build_client(target, retries=0)
    safe_url = cfg.safe_url
    for secret in target.secrets:   # safe_url misses some (sentinel_password=...)
        safe_url = safe_url.replace(quote(secret, safe=""), "***").replace(secret, "***")
    return RedisStore(client, subscriber, safe_url, secrets=target.secrets, on_close=on_close + sub_close)
