"""A Redis store URL -> ``RedisTarget``: the servers it names (one, a Sentinel master, a Cluster) and the
options of every connection. Plain parsing: redis-py is not imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

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
