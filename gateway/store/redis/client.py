"""A ``RedisTarget`` (url.py) -> a redis-py asyncio client for the Redis store, with the
timeouts and the retry policy every connection gets. ``follow_master(client)``: on Sentinel, ask the
sentinels which server is the master now, and leave an old one.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

from .url import RedisTarget

CONNECT_TIMEOUT_S = 2.0   # a dead or unroutable Redis must not stall requests
COMMAND_TIMEOUT_S = 2.0


class MasterPool(SentinelConnectionPool):
    """redis-py asks the sentinels for the master only when a connection (re)connects: a pooled connection to an
    old master that is still up (not demoted yet, or cut off from the sentinels but not from us) would go on
    reading and writing there. Here a connection to another server than the last master the sentinels named
    connects again (to the current master) before it is handed out."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().get_connection(*args, **kwargs)
        if self.master_address is not None and (connection.host, connection.port) != tuple(self.master_address):
            try:
                await connection.disconnect()
                await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
        return connection


async def follow_master(client: Any) -> None:
    """Sentinel: ask the sentinels for the master now (MasterNotFoundError, a ConnectionError, when they name
    none); from then on no connection of ``client`` goes to an earlier one. Elsewhere: nothing."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        await pool.get_master_address()


def build_client(target: RedisTarget, retries: int) -> tuple[Any, list[Any]]:
    """A redis-py asyncio client for ``target`` and what else to close with it. ``retries``: how often a
    command is sent again on a fresh connection after a connection error (0 for subscriptions)."""
    # Only connection errors are retried (a stale pooled connection after a restart): a timeout is not,
    # so a command never waits more than COMMAND_TIMEOUT_S for an answer.
    common = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": COMMAND_TIMEOUT_S,
              "retry": Retry(NoBackoff(), retries, supported_errors=(ConnectionError,))}
    if target.mode == "standalone":
        return Redis.from_url(target.url, **common), []
    options = {k: v for k, v in target.options.items() if v is not None}
    if target.mode == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return RedisCluster(startup_nodes=nodes, **options, **common), []
    sentinel_kwargs = {k: v for k, v in target.sentinel_options.items() if v is not None}
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs={**sentinel_kwargs, **common}, **options, **common)
    return (sentinel.master_for(target.service_name, redis_class=Redis, connection_pool_class=MasterPool),
            [sentinel.aclose])
