"""The Redis store writes the key layout of gateway/store/base.py: names, expiry, one slot per step."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.config.load import StoreConfig
from gateway.store import RefreshRecord, Revocation, UserRecord, open_store
from gateway.store.base import REVOCATIONS_CHANNEL
from gateway.store.redis import store as redis_store_module

from .conftest import ISS, drop_idle_subscribers, flush

pytestmark = pytest.mark.integration


@pytest.fixture
async def raw(redis_url: str):
    await flush(redis_url)
    async with Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


@pytest.fixture
async def redis_store(redis_url: str, raw: Redis):
    store = await open_store(StoreConfig(url=redis_url))
    yield store
    await store.close()


def same_slot(*keys: str) -> bool:
    return len({key_slot(k.encode()) for k in keys}) == 1


async def test_revocations_are_keyed_as_designed_and_expire_with_the_token(redis_store, raw):
    now = time.time()
    await redis_store.revoke(Revocation("jti", ISS, "j1", now + 60, now + 60))
    await redis_store.revoke(Revocation("sub", ISS, "alice", now, now + 900))
    jti_key, sub_key = f"deny:jti:{{{ISS}|j1}}", f"deny:sub:{{{ISS}|alice}}"
    assert await raw.get(jti_key) == "1" and 58_000 < await raw.pttl(jti_key) <= 60_000
    assert float(await raw.get(sub_key)) == now and 898_000 < await raw.pttl(sub_key) <= 900_000
    members = await raw.zrange("deny:index:{deny}", 0, -1)
    assert sorted(json.loads(m)[0] for m in members) == ["jti", "sub"]
    assert same_slot("deny:index:{deny}", "deny:values:{deny}")


async def test_a_reload_reads_the_index_page_by_page_and_drops_the_expired_in_pages(redis_store, raw, monkeypatch):
    """A million revocations read in one script held Redis for seconds and outlasted the command timeout, so a
    mirror never loaded: a reload reads ZSCAN pages (each one call of bounded size) and sweeps the expired
    entries a page at a time, and still finds every live one exactly once."""
    monkeypatch.setattr(redis_store_module, "LIVE_ENTRIES", 10)
    monkeypatch.setattr(redis_store_module, "SWEEP_PAGE", 7)
    now = time.time()
    live = {*(Revocation("jti", ISS, f"j{i}", now + 60 + i, now + 60 + i) for i in range(250)),
            *(Revocation("sid", ISS, f"s{i}", now, now + 90) for i in range(50)),
            Revocation("sub", ISS, "alice", now, now + 900)}
    for revocation in live:
        await redis_store.revoke(revocation)
    expired = {json.dumps(["jti", ISS, f"old{i}"], separators=(",", ":")): now - 5 for i in range(40)}
    await raw.zadd("deny:index:{deny}", expired)   # as entries are once their time has passed
    await raw.hset("deny:values:{deny}", mapping={member: repr(now - 5) for member in expired})
    await raw.config_resetstat()
    found = await redis_store.live_revocations(now)
    assert len(found) == len(live) and set(found) == live
    assert await raw.zcard("deny:index:{deny}") == await raw.hlen("deny:values:{deny}") == len(live)
    stats = await raw.info("commandstats")
    assert stats["cmdstat_zscan"]["calls"] >= len(live) // 10 // 2            # page by page (COUNT is a hint)
    assert stats["cmdstat_zrangebyscore"]["calls"] == 40 // 7 + 1              # 7 expired a call, then none left


async def test_revoke_publishes_one_compact_json_message(redis_store, raw):
    now = time.time()
    async with raw.pubsub() as pubsub:
        await pubsub.subscribe(REVOCATIONS_CHANNEL)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        await redis_store.revoke(Revocation("jti", ISS, "j1", now + 60, now + 60))
        message = await pubsub.get_message(timeout=5)
    data = json.loads(message["data"])
    assert now <= data.pop("at") <= time.time()   # when it was published: what a mirror's lag is measured from
    assert data == {"kind": "jti", "iss": ISS, "id": "j1", "value": now + 60, "expires_at": now + 60}
    assert " " not in message["data"]


async def test_refresh_tokens_of_a_family_share_its_slot(redis_store, raw):
    now = time.time()
    first, second = (RefreshRecord(h * 64, "fam1", "alice", now + 600) for h in "ab")
    await redis_store.add_refresh(first, ISS)
    assert (await redis_store.rotate_refresh(first.token_hash, second, now)).outcome == "ok"
    keys = ["refresh:{fam1}:" + "a" * 64, "refresh:{fam1}:" + "b" * 64, "family:{fam1}"]
    assert same_slot(*keys)
    assert (await raw.hgetall(keys[0]))["state"] == "rotated"
    assert (await raw.hgetall(keys[2]))["head"] == "b" * 64
    assert await raw.get("refresh:family-of:{" + "b" * 64 + "}") == "fam1"
    assert await raw.smembers(f"families:{{{ISS}|alice}}") == {"fam1"}
    assert all(590_000 < ttl <= 600_000 for ttl in [await raw.pttl(k) for k in keys])


async def test_users_and_rate_limits_are_keyed_as_designed(redis_store, raw):
    await redis_store.add_user(UserRecord("alice", "hash", ("admin", "user")))
    assert (await raw.hgetall("user:{alice}"))["roles"] == '["admin", "user"]'
    assert await raw.smembers("users:{users}") == {"alice"}
    await redis_store.hit("login:1.2.3.4", 5, 60, time.time())
    assert await raw.get("rate:{login:1.2.3.4}") == "1"
    assert 59 <= await raw.ttl("rate:{login:1.2.3.4}") <= 60


async def test_a_quiet_feed_keeps_its_subscription_alive_with_pings(redis_url, raw):
    store = await open_store(StoreConfig(url=redis_url))
    store.feed_ping_s = 0.2   # well within the idle limit
    try:
        async with drop_idle_subscribers(redis_url) as reaper, store.revocation_events() as feed:
            waiting = asyncio.create_task(anext(feed))
            silent = await reaper.outwait_silent_subscribers()   # quiet for longer than the server allows
            assert len(reaper.seen - set(silent)) == 1   # the reaper watched the feed's subscription too
            assert sorted(reaper.killed) == sorted(silent), "the feed's subscription was dropped as idle"
            assert not waiting.done()
            now = time.time()
            await store.revoke(Revocation("jti", ISS, "j2", now + 60, now + 60))
            assert (await asyncio.wait_for(waiting, 5)).id == "j2"
    finally:
        await store.close()
