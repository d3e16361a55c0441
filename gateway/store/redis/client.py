"""A ``RedisTarget`` (url.py) -> a redis-py asyncio client for the Redis store, with the
timeouts and the retry policy every connection gets.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

from .url import RedisTarget

CONNECT_TIMEOUT_S = 2.0   # a dead or unroutable Redis must not stall requests
COMMAND_TIMEOUT_S = 2.0


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
    return sentinel.master_for(target.service_name, redis_class=Redis), [sentinel.aclose]
