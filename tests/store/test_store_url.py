"""Store URLs -> client parameters (standalone, Sentinel, Cluster, TLS), without any server."""

from __future__ import annotations

import time

import pytest

from gateway.config.load import StoreConfig
from gateway.store import MemoryStore, StoreUnavailable, open_store, parse_redis_url
from tests.redisproc import free_port


def test_standalone_urls_go_to_redis_py_as_they_are():
    for url in ("redis://:pw@127.0.0.1:6380/2", "rediss://cache.example.test", "unix:///run/redis.sock?db=1"):
        target = parse_redis_url(url)
        assert (target.mode, target.url) == ("standalone", url)
    assert parse_redis_url("redis://u:p%40ss@h/0?password=other").secrets == ("p@ss", "other")


def test_sentinel_url_names_the_sentinels_the_service_and_the_masters_options():
    target = parse_redis_url("redis+sentinel://:pw@s1:26380,s2,[::1]:26381/mymaster?db=3&sentinel_password=spw")
    assert target.mode == "sentinel"
    assert target.nodes == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert target.service_name == "mymaster"
    assert target.options == {"username": None, "password": "pw", "db": 3}
    assert target.sentinel_options == {"password": "spw"}
    assert set(target.secrets) == {"pw", "spw"}


def test_cluster_url_names_the_seed_nodes():
    target = parse_redis_url("redis+cluster://app:pw@n1:7000,n2:7001")
    assert (target.mode, target.nodes) == ("cluster", (("n1", 7000), ("n2", 7001)))
    assert target.options == {"username": "app", "password": "pw"}


def test_rediss_variants_use_tls_for_servers_and_sentinels():
    cluster = parse_redis_url("rediss+cluster://n1:7000?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")
    assert cluster.options["ssl"] is True and cluster.options["ssl_ca_certs"] == "/etc/ca.pem"
    assert cluster.options["ssl_check_hostname"] is False
    sentinel = parse_redis_url("rediss+sentinel://s1/main?ssl_cert_reqs=required")
    assert sentinel.sentinel_options == {"ssl": True, "ssl_cert_reqs": "required"}


@pytest.mark.parametrize("url", [
    "redis+sentinel://:pw@s1:26379",                 # no service name
    "redis+cluster://:pw@n1:7000/3",                 # a cluster has one database
    "redis+cluster://:pw@n1:7000?db=2",              # not a cluster parameter
    "redis+sentinel://:pw@s1:port/main",             # bad port
    "redis+cluster://:pw@n1:7000?ssl_ca_certs=/ca",  # TLS options need rediss+
    "redis+cluster://:pw@",                          # no host
])
def test_bad_urls_are_refused_without_showing_the_password(url: str):
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert "pw" not in str(caught.value)


async def test_memory_url_opens_the_embedded_store():
    store = await open_store(StoreConfig(url="memory://"))
    assert isinstance(store, MemoryStore) and store.safe_url == "memory://"
    await store.close()


async def test_store_url_in_messages_hides_every_password():
    store = await open_store(StoreConfig(url="redis+sentinel://:p%40w@s1/main?sentinel_password=spw&db=1"))
    assert store.safe_url == "redis+sentinel://:***@s1/main?sentinel_password=***&db=1"
    await store.close()


@pytest.mark.parametrize("url", ["redis+sentinel://:pw@127.0.0.1:{port}/main",
                                 "redis+cluster://:pw@127.0.0.1:{port}"])
async def test_sentinel_and_cluster_stores_open_without_servers_and_fail_promptly(url: str):
    store = await open_store(StoreConfig(url=url.format(port=free_port())))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert time.monotonic() - started < 3
        assert "pw" not in str(caught.value)
    finally:
        await store.close()
