"""The Redis store on a real 3-master Cluster and a Sentinel setup: what the contract suite alone would not show.

(The whole contract suite runs on both too: see the ``backend`` fixture in conftest.py.)
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.config import StoreConfig
from gateway.store import Revocation, open_store

from .conftest import ISS, flush

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]


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
