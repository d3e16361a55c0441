"""The Redis store on a real 3-master Cluster and a Sentinel setup: what the contract suite alone would not show.

(The whole contract suite runs on both too: see the ``backend`` fixture in conftest.py.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.config.load import StoreConfig
from gateway.store import Revocation, Store, StoreUnavailable, open_store
from tests.redis_topologies import SENTINEL_SERVICE, SentinelTopology, info, start_sentinel
from tests.redisproc import free_port

from .conftest import ISS, drop_idle_subscribers, flush
from .test_store_unavailable import assert_every_call_fails

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]
FAILOVER_LIMIT_S = 20.0   # down-after 1 s, then the sentinels elect a leader and promote the replica


@pytest.fixture
async def cluster_url(redis_cluster_url: str) -> str:
    await flush(redis_cluster_url)
    return redis_cluster_url


async def test_a_fresh_cluster_store_answers_concurrent_first_commands(cluster_url: str):
    # A gateway's first requests arrive together: none may fail while the client learns the slot map.
    for _ in range(3):
        store = await open_store(StoreConfig(url=cluster_url))
        try:
            waits = await asyncio.gather(*(store.hit(f"first-{i}", 5, 60, time.time()) for i in range(30)))
        finally:
            await store.close()
        assert waits == [0.0] * 30


@pytest.mark.parametrize("seed", [0, -1])
async def test_a_feed_opened_before_any_command_hears_a_revoke_made_through_another_node(cluster_url: str,
                                                                                         seed: int):
    nodes = cluster_url.removeprefix("redis+cluster://").split(",")
    listener = await open_store(StoreConfig(url=f"redis+cluster://{nodes[seed]}"))
    writer = await open_store(StoreConfig(url=f"redis+cluster://{nodes[seed + 1]}"))
    revocation = Revocation("jti", ISS, f"j{seed}", time.time() + 60, time.time() + 60)
    try:
        async with listener.revocation_events() as feed:
            await writer.revoke(revocation)
            assert await asyncio.wait_for(anext(feed), 5) == revocation
    finally:
        await listener.close()
        await writer.close()


async def until_answers(store: Store, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await store.ping()
        except StoreUnavailable:
            assert time.monotonic() < deadline, f"the store did not answer within {limit_s}s"
            await asyncio.sleep(0.1)


async def test_the_store_follows_a_sentinel_failover_to_the_promoted_replica(tmp_path: Path):
    setup = await asyncio.to_thread(start_sentinel, tmp_path)   # our own: this test kills its master
    store = await open_store(StoreConfig(url=setup.url))
    try:
        before = Revocation("jti", ISS, "before", time.time() + 60, time.time() + 60)
        await store.revoke(before)
        async with Redis(port=setup.master.port) as master:
            assert await master.execute_command("WAIT", 1, 5000) == 1   # the replica holds it too
        feed = store.revocation_events()
        await asyncio.wait_for(feed.ready(), 10)   # bounded: a wait that never ends fails here, with its place
        await asyncio.to_thread(setup.master.kill)
        with pytest.raises(StoreUnavailable):   # the feed breaks: its mirror reloads and subscribes again
            await asyncio.wait_for(anext(feed), 10)
        await until_answers(store, FAILOVER_LIMIT_S)
        assert await asyncio.to_thread(setup.current_master_port) == setup.replica.port
        after = Revocation("jti", ISS, "after", time.time() + 60, time.time() + 60)
        again = store.revocation_events()
        try:
            await asyncio.wait_for(again.ready(), 10)   # a subscription after the failover: bounded too
            await asyncio.wait_for(store.revoke(after), 10)
            assert await asyncio.wait_for(anext(again), 5) == after
        finally:
            await asyncio.wait_for(again.aclose(), 10)
        assert {r.id for r in await store.live_revocations(time.time())} == {"before", "after"}
    finally:
        await store.close()
        await asyncio.to_thread(setup.stop)


async def until_every_sentinel_names(setup: SentinelTopology, port: int, limit_s: float) -> None:
    def named() -> bool:
        return all(info(s.port, "SENTINEL", "MASTER", SENTINEL_SERVICE).get("port") == str(port)
                   for s in setup.sentinels)
    deadline = time.monotonic() + limit_s
    while not await asyncio.to_thread(named):
        assert time.monotonic() < deadline, f"the sentinels did not all name :{port} as the master within {limit_s}s"
        await asyncio.sleep(0.05)


async def test_a_feed_left_on_a_master_the_sentinels_replaced_breaks_so_the_mirror_reloads(tmp_path: Path):
    # After a failover the revocations are published on the new master. An old master that stays up and is never
    # demoted (cut off from the sentinels but not from this gateway; here: it refuses their REPLICAOF) answers
    # the feed's PINGs and never hears a revocation again: the feed must leave it by itself, and promptly; and
    # the reload that follows must read the new master, not the old one through a pooled connection.
    setup = await asyncio.to_thread(start_sentinel, tmp_path)
    store = await open_store(StoreConfig(url=setup.url))
    store.feed_ping_s = 0.5
    writer = None
    try:
        async with Redis(port=setup.master.port, socket_timeout=5) as master:
            await master.execute_command("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
        await store.ping()
        in_flight = await store._c.connection_pool.get_connection()   # a command in flight, on this master
        feed = store.revocation_events()
        await asyncio.wait_for(feed.ready(), 10)   # subscribed on the master of now
        waiting = asyncio.ensure_future(anext(feed))
        async with Redis(port=setup.sentinels[0].port, socket_timeout=5) as sentinel:
            assert await sentinel.execute_command("SENTINEL", "FAILOVER", SENTINEL_SERVICE)
        await until_every_sentinel_names(setup, setup.replica.port, FAILOVER_LIMIT_S)
        writer = await open_store(StoreConfig(url=setup.url))   # another gateway: it writes to the new master
        revocation = Revocation("jti", ISS, "after", time.time() + 60, time.time() + 60)
        await asyncio.wait_for(writer.revoke(revocation), 10)
        with pytest.raises(StoreUnavailable, match="no longer the master"):   # ~ one ping interval
            await asyncio.wait_for(waiting, 5)
        assert info(setup.master.port, "INFO", "replication").get("role") == "master"   # still up, undemoted
        again = store.revocation_events()   # the mirror subscribes again and reloads: the revocation is there
        try:
            await asyncio.wait_for(again.ready(), 10)
            assert revocation in await asyncio.wait_for(store.live_revocations(time.time()), 10)
            await store._c.connection_pool.release(in_flight)   # back in the pool, still to the old master
            later = Revocation("jti", ISS, "later", time.time() + 60, time.time() + 60)
            await asyncio.wait_for(store.revoke(later), 10)   # its own revocations go to the new master too
            assert await asyncio.wait_for(anext(again), 5) == later
        finally:
            await asyncio.wait_for(again.aclose(), 10)
    finally:
        await store.close()
        if writer is not None:
            await writer.close()
        await asyncio.to_thread(setup.stop)


@pytest.mark.parametrize("scheme, path", [("redis+cluster", ""), ("redis+sentinel", "/tokengate")])
async def test_every_call_fails_promptly_when_no_node_of_the_topology_answers(scheme: str, path: str):
    store = await open_store(StoreConfig(url=f"{scheme}://127.0.0.1:{free_port()},127.0.0.1:{free_port()}{path}"))
    try:
        await assert_every_call_fails(store)
    finally:
        await store.close()


@pytest.mark.parametrize("topology", ["redis_cluster_url", "redis_sentinel_url"])
async def test_a_quiet_feed_keeps_its_subscription_alive_with_pings(topology: str, request: pytest.FixtureRequest):
    url = request.getfixturevalue(topology)
    await flush(url)
    store = await open_store(StoreConfig(url=url))
    store.feed_ping_s = 0.2   # well within the idle limit
    revocation = Revocation("jti", ISS, "quiet", time.time() + 60, time.time() + 60)
    try:
        async with drop_idle_subscribers(url) as reaper, store.revocation_events() as feed:
            waiting = asyncio.ensure_future(anext(feed))
            silent = await reaper.outwait_silent_subscribers()   # quiet for longer than the servers allow
            assert len(reaper.seen - set(silent)) == 1   # the reaper watched the feed's subscription too
            assert sorted(reaper.killed) == sorted(silent), "the feed's subscription was dropped as idle"
            assert not waiting.done()
            await store.revoke(revocation)
            assert await asyncio.wait_for(waiting, 5) == revocation
    finally:
        await store.close()
