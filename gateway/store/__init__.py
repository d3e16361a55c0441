"""The store: one interface (base.Store), two backends. ``open_store(cfg)`` turns store.url into one.

memory:// embedded; redis://, rediss://, unix:// one server; redis+sentinel://h1:p1,h2:p2/<service> the
Sentinel master; redis+cluster://h1:p1,h2:p2 a Cluster; the rediss+ variants use TLS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .base import (RefreshRecord, Revocation, RevocationFeed, Rotation, Store, StoreUnavailable,
                   UserRecord)
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = ["MemoryStore", "RedisTarget", "store_reachable", "RefreshRecord", "Revocation", "RevocationFeed", "Rotation", "Store",
           "StoreUnavailable", "UserRecord", "open_store", "parse_redis_url"]

@contextlib.contextmanager
def store_reachable(what: str = "the session store") -> Iterator[None]:
    """Inside, StoreUnavailable becomes DependencyDown (503): HTTP clients never see the store's URL."""
    from ..errors import DependencyDown

    try:
        yield
    except StoreUnavailable as exc:
        raise DependencyDown(f"{what} is unavailable") from exc


CONNECT_TIMEOUT_S = 2.0   # a dead or unroutable Redis must not stall requests
COMMAND_TIMEOUT_S = 2.0
DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
_TLS_PARAMS = {"ssl_cert_reqs": str, "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str,
               "ssl_check_hostname": lambda v: v.lower() in ("1", "true", "yes")}
_PARAMS = {"sentinel": {"db": int, "username": str, "password": str, "sentinel_username": str,
                        "sentinel_password": str},
           "cluster": {"username": str, "password": str}}


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis store URL names: where the servers are and the options of every connection."""

    mode: Literal["standalone", "sentinel", "cluster"]
    url: str = ""                                   # standalone: handed to redis-py's from_url as it is
    nodes: tuple[tuple[str, int], ...] = ()         # sentinel or cluster: the seed nodes
    service_name: str = ""                          # sentinel: the monitored master's name
    options: Mapping[str, Any] = field(default_factory=dict)            # data connections
    sentinel_options: Mapping[str, Any] = field(default_factory=dict)   # connections to the sentinels
    secrets: tuple[str, ...] = ()                   # passwords, to keep out of every message


async def open_store(cfg: StoreConfig) -> Store:
    """The store that ``cfg.url`` names. Connects lazily: with Redis down, calls raise StoreUnavailable
    until it answers. Raises ValueError for a URL that names no store (the message has no password)."""
    if urlsplit(cfg.url).scheme == "memory":
        return MemoryStore()
    from .redis import RedisStore   # redis-py loads only when a Redis store is configured

    target = parse_redis_url(cfg.url)
    client, on_close = build_client(target, retries=1)
    subscriber, sub_close = build_client(target, retries=0)
    safe_url = cfg.safe_url
    for secret in target.secrets:   # safe_url misses some (sentinel_password=...)
        safe_url = safe_url.replace(quote(secret, safe=""), "***").replace(secret, "***")
    return RedisStore(client, subscriber, safe_url, secrets=target.secrets, on_close=on_close + sub_close)


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme, _, mode = parts.scheme.partition("+")
    if scheme not in ("redis", "rediss", "unix") or mode not in ("", "sentinel", "cluster"):
        raise ValueError(f"{parts.scheme}:// is not a Redis store url")
    if not mode:
        query = dict(parse_qsl(parts.query))
        secrets = tuple(s for s in (unquote(parts.password or ""), query.get("password", "")) if s)
        return RedisTarget("standalone", url=url, secrets=secrets)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = (unquote(p) for p in userinfo.partition(":"))
    options: dict[str, Any] = {"username": username or None, "password": password or None}
    sentinel_options: dict[str, Any] = {}
    tls = scheme == "rediss"
    if tls:
        options["ssl"] = True
    for key, value in parse_qsl(parts.query):
        convert = {**_PARAMS[mode], **(_TLS_PARAMS if tls else {})}.get(key)
        if convert is None:
            raise ValueError(f"unknown parameter {key!r} in the {parts.scheme}:// store url")
        target = sentinel_options if key.startswith("sentinel_") else options
        target[key.removeprefix("sentinel_")] = convert(value)
    nodes = tuple(_node(h, DEFAULT_PORTS[mode]) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"the {parts.scheme}:// store url names no host")
    service = unquote(parts.path.strip("/"))
    if mode == "sentinel" and not service:
        raise ValueError("a redis+sentinel:// url names the master after the hosts: .../<service_name>")
    if mode == "cluster" and service:
        raise ValueError("a redis+cluster:// url has no path (a cluster has one database)")
    secrets = tuple(s for s in (options.get("password"), sentinel_options.get("password")) if s)
    if mode == "sentinel":   # the sentinels speak TLS like the servers they watch
        sentinel_options = {**{k: v for k, v in options.items() if k.startswith("ssl")}, **sentinel_options}
    return RedisTarget(mode, nodes=nodes, service_name=service, options=options,
                       sentinel_options=sentinel_options, secrets=secrets)


def _node(text: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"bad host:port {text!r} in the store url") from None
    if not parts.hostname:
        raise ValueError(f"bad host:port {text!r} in the store url")
    return parts.hostname, port


def build_client(target: RedisTarget, retries: int) -> tuple[Any, list[Any]]:
    """A redis-py asyncio client for ``target`` and what else to close with it. ``retries``: how often a
    command is sent again on a fresh connection after a connection error (0 for subscriptions)."""
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError

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
