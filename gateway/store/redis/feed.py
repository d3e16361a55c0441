"""RedisFeed: the Redis store's revocation feed, one pub/sub subscription on a connection of its own.

That connection never reconnects by itself: a break (or a silent link that misses its PING) ends the
feed with StoreUnavailable, so that the mirror reloads what it may have missed. On Sentinel, so does a
subscription left on a server that the sentinels no longer name as the master: after a failover the
revocations are published on the new master, and an old master that is still up and answering (one the
sentinels could not demote, e.g. cut off from them but not from us) would otherwise hold the feed forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from ..base import REVOCATION_KINDS, REVOCATIONS_CHANNEL, Revocation, RevocationFeed, StoreUnavailable

log = logging.getLogger(__name__)

PING_MESSAGE = b"tokengate-feed"
SUBSCRIBE_TIMEOUT_S = 5.0
MASTER_CHECK_TIMEOUT_S = 2.0   # Sentinel: the longest wait for the sentinels to name the master


def encode_revocation(r: Revocation, now: float | None = None) -> bytes:
    """The pub/sub message: compact JSON, stamped with the time it is published (``at``)."""
    return json.dumps({"kind": r.kind, "iss": r.iss, "id": r.id, "value": r.value, "expires_at": r.expires_at,
                       "at": time.time() if now is None else now}, separators=(",", ":")).encode()


def decode_revocation(data: bytes) -> Revocation | None:
    try:
        m = json.loads(data)
        if m["kind"] not in REVOCATION_KINDS:
            raise ValueError(m["kind"])
        at = m.get("at")   # absent from an older instance's messages
        return Revocation(m["kind"], str(m["iss"]), str(m["id"]), float(m["value"]), float(m["expires_at"]),
                          float(at) if at is not None else None)
    except (ValueError, TypeError, KeyError):
        log.warning("ignored a malformed revocation message on %s", REVOCATIONS_CHANNEL)
        return None


class RedisFeed(RevocationFeed):
    """``translate(exc)`` turns a redis error into StoreUnavailable (None when it is a bug)."""

    def __init__(self, subscriber: Any, safe_url: str, translate: Callable[[BaseException], StoreUnavailable | None],
                 feeds: set[RedisFeed], ping_interval_s: float) -> None:
        self._subscriber, self._url, self._translate = subscriber, safe_url, translate
        self._feeds, self._ping_interval_s = feeds, ping_interval_s
        self._pubsub: Any = None
        self._closed = False
        self._master_check_at = 0.0   # Sentinel: when to ask again which server is the master
        feeds.add(self)

    async def ready(self) -> None:
        if self._closed:
            raise StoreUnavailable(self._url, "the revocation feed is closed")
        if self._pubsub is not None:
            return
        try:
            # A cluster client learns its slot map on its first command, but SUBSCRIBE picks its node from
            # that map without asking: fetch the map first (classic pub/sub reaches every node of a cluster).
            if isinstance(self._subscriber, RedisCluster):
                await self._subscriber.initialize()
            self._pubsub = pubsub = self._subscriber.pubsub()
            await pubsub.subscribe(REVOCATIONS_CHANNEL)
            await self._confirmed(pubsub)
            self._master_check_at = time.monotonic() + self._ping_interval_s
        except Exception as exc:
            if (translated := await self._broken(exc)) is None:
                raise
            raise translated from exc

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait for the server's subscribe reply: from then on it sends us every message."""
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "subscribe":
                return
        raise TimeoutError("no reply to SUBSCRIBE")

    async def __anext__(self) -> Revocation:
        if self._closed:
            raise StopAsyncIteration
        await self.ready()
        pubsub, pinged = self._pubsub, False
        while True:
            try:
                if time.monotonic() >= self._master_check_at:
                    self._master_check_at = time.monotonic() + self._ping_interval_s
                    await self._on_the_master(pubsub)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._ping_interval_s)
                if message is None and pinged:
                    raise TimeoutError("no answer to PING on the subscription")
                if message is None:   # quiet for a while: make sure the link is still there
                    await pubsub.ping(PING_MESSAGE)
                    pinged = True
                    continue
            except Exception as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                if (translated := await self._broken(exc)) is None:
                    raise
                raise translated from exc
            pinged = False
            if message["type"] == "message" and (revocation := decode_revocation(message["data"])):
                return revocation

    async def _on_the_master(self, pubsub: Any) -> None:
        """Sentinel: a ConnectionError when the sentinels name another server than the subscription's as the
        master (asked every ping interval). No master from them (a failover under way), or no answer within
        MASTER_CHECK_TIMEOUT_S, passes: the PING watches the link itself, and the next check decides."""
        pool = getattr(self._subscriber, "connection_pool", None)
        connection = pubsub.connection
        if not isinstance(pool, SentinelConnectionPool) or connection is None:
            return
        try:
            async with asyncio.timeout(MASTER_CHECK_TIMEOUT_S):   # the subscription is not read meanwhile
                host, port = await pool.get_master_address()
        except (MasterNotFoundError, TimeoutError):
            return
        if (str(host), int(port)) != (str(connection.host), int(connection.port)):
            raise RedisConnectionError(f"the subscription's server {connection.host}:{connection.port} is no longer "
                                       f"the master (the sentinels name {host}:{port})")

    async def _broken(self, exc: Exception) -> StoreUnavailable | None:
        """Close the feed; StoreUnavailable for ``exc``, or None when it is a bug (re-raised as it is)."""
        await self.aclose()
        return self._translate(exc)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._feeds.discard(self)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()
