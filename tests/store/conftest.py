"""Store fixtures: ``store`` is each backend in turn: memory, then Redis marked ``integration`` (standalone,
then a 3-master Cluster and a Sentinel setup, also marked ``redis_topology``).

The Redis server itself (``redis_url``, ``spawn_redis``) comes from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.config import StoreConfig
from gateway.store import MemoryStore, Store, open_store
from tests.conftest import flush

ISS = "https://auth.example.test"
MakeStore = Callable[[], Awaitable[Store]]


class Clock:
    """Test time. The memory store reads this clock, so a test moves it by hand; Redis keeps its own
    time, so there ``expire`` polls (bounded) until the condition holds."""

    def __init__(self, fake: bool) -> None:
        self.fake, self._now = fake, time.time()

    def __call__(self) -> float:
        return self._now if self.fake else time.time()

    async def expire(self, check: Callable[[], Awaitable[bool]], at: float, slack_s: float = 3.0) -> None:
        """Let time pass ``at`` (epoch s), then assert ``check()`` holds (on Redis: within slack_s after)."""
        if self.fake:
            self._now = max(self._now, at)
            assert await check()
            return
        deadline = max(at, time.time()) + slack_s
        while not await check():
            assert time.time() < deadline, "the condition did not hold in time"
            await asyncio.sleep(0.05)


TOPOLOGY = (pytest.mark.integration, pytest.mark.redis_topology)
REDIS_URLS = {"redis": "redis_url", "redis-cluster": "redis_cluster_url", "redis-sentinel": "redis_sentinel_url"}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration),
                        pytest.param("redis-cluster", marks=TOPOLOGY), pytest.param("redis-sentinel", marks=TOPOLOGY)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock(backend: str) -> Clock:
    return Clock(fake=backend == "memory")


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    return "memory://" if backend == "memory" else request.getfixturevalue(REDIS_URLS[backend])


@pytest.fixture
async def make_store(backend: str, store_url: str, clock: Clock) -> AsyncIterator[MakeStore]:
    """make_store() -> a store on the test's backend. Redis: a new client each time, on clean keys.
    Memory lives in one process, so "another store" is the same one."""
    if backend != "memory":
        await flush(store_url)
    memory = MemoryStore(clock=clock)
    opened: list[Store] = []

    async def make() -> Store:
        if backend == "memory":
            return memory
        opened.append(await open_store(StoreConfig(url=store_url)))
        return opened[-1]

    yield make
    for store in opened:
        await store.close()
    await memory.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()
