"""A Redis that is down, dies or refuses us: every call raises StoreUnavailable, promptly, without the
password; once Redis answers again the same store works. Each test has a throwaway redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config.load import StoreConfig
from gateway.store import MemoryStore, RefreshRecord, Revocation, Store, StoreUnavailable, UserRecord, open_store
from tests.redisproc import RedisProc, free_port

from .conftest import ISS

pytestmark = pytest.mark.integration
PROMPT_S = 3.0   # a dead Redis answers no call later than this


def every_call(store: Store) -> dict[str, Callable[[], Awaitable[Any]]]:
    now = time.time()
    token = RefreshRecord("h" * 64, "fam", "alice", now + 60)
    return {
        "ping": store.ping,
        "revoke": lambda: store.revoke(Revocation("jti", ISS, "j1", now + 60, now + 60)),
        "live_revocations": lambda: store.live_revocations(now),
        "revocation_events": lambda: store.revocation_events().__aenter__(),
        "add_refresh": lambda: store.add_refresh(token, ISS),
        "rotate_refresh": lambda: store.rotate_refresh(token.token_hash, token, now),
        "kill_family": lambda: store.kill_family("fam"),
        "kill_families_of": lambda: store.kill_families_of(ISS, "alice"),
        "find_refresh": lambda: store.find_refresh(token.token_hash),
        "get_user": lambda: store.get_user("alice"),
        "add_user": lambda: store.add_user(UserRecord("alice", "x")),
        "put_user": lambda: store.put_user(UserRecord("alice", "x")),
        "delete_user": lambda: store.delete_user("alice"),
        "list_users": store.list_users,
        "hit": lambda: store.hit("login:x", 5, 60, now),
    }


async def assert_every_call_fails(store: Store, secret: str = "") -> None:
    for name, call in every_call(store).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await asyncio.wait_for(call(), PROMPT_S + 1)
        assert time.monotonic() - started < PROMPT_S, name
        assert caught.value.url == store.safe_url
        if secret:
            assert secret not in str(caught.value) and secret not in caught.value.url, name


async def assert_every_call_works(store: Store) -> None:
    for name, call in every_call(store).items():
        result = await call()
        if name == "revocation_events":
            await result.aclose()


async def test_a_store_opens_while_redis_is_down_and_works_once_it_is_up(tmp_path):
    proc = RedisProc(tmp_path, free_port())
    store = await open_store(StoreConfig(url=proc.url))
    try:
        await assert_every_call_fails(store)
        await asyncio.to_thread(proc.start)
        await assert_every_call_works(store)
    finally:
        await store.close()
        await asyncio.to_thread(proc.stop)


async def test_every_call_fails_promptly_while_redis_is_dead_and_works_after_a_restart(spawn_redis):
    proc = await asyncio.to_thread(spawn_redis)
    store = await open_store(StoreConfig(url=proc.url))
    try:
        await assert_every_call_works(store)
        await asyncio.to_thread(proc.kill)
        await assert_every_call_fails(store)
        await asyncio.to_thread(proc.start)   # same port
        await assert_every_call_works(store)
    finally:
        await store.close()


async def test_the_revocation_feed_breaks_with_store_unavailable_when_redis_dies(spawn_redis):
    proc = await asyncio.to_thread(spawn_redis)
    store = await open_store(StoreConfig(url=proc.url))
    try:
        async with store.revocation_events() as feed:
            waiting = asyncio.create_task(anext(feed))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(proc.kill)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(waiting, PROMPT_S)
            with pytest.raises(StopAsyncIteration):   # a broken feed stays closed: subscribe again
                await anext(feed)
    finally:
        await store.close()


async def test_a_frozen_redis_makes_calls_time_out_and_breaks_the_feed(spawn_redis):
    proc = await asyncio.to_thread(spawn_redis)
    store = await open_store(StoreConfig(url=proc.url))
    store.feed_ping_s = 0.1
    try:
        async with store.revocation_events() as feed:
            waiting = asyncio.create_task(anext(feed))
            proc.freeze()
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(store.ping(), PROMPT_S + 2)
                assert time.monotonic() - started < PROMPT_S + 0.5   # the command timeout, not forever
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(waiting, PROMPT_S)
            finally:
                proc.thaw()
        await store.ping()
    finally:
        await store.close()


async def test_messages_never_show_the_password(spawn_redis):
    proc = await asyncio.to_thread(spawn_redis, "--requirepass", "s3cret-pw")
    good = await open_store(StoreConfig(url=f"redis://:s3cret-pw@127.0.0.1:{proc.port}/0"))
    wrong = await open_store(StoreConfig(url=f"redis://:wrong-pw@127.0.0.1:{proc.port}/0"))
    try:
        await good.ping()
        await assert_every_call_fails(wrong, secret="wrong-pw")
        await asyncio.to_thread(proc.kill)
        await assert_every_call_fails(good, secret="s3cret-pw")
    finally:
        await good.close()
        await wrong.close()


async def test_a_closed_store_refuses_calls(redis_url):
    for store in (MemoryStore(), await open_store(StoreConfig(url=redis_url))):
        await store.close()
        await assert_every_call_fails(store)
