"""Store fixtures: ``store`` is each backend in turn: memory, then Redis marked ``integration`` (standalone,
then a 3-master Cluster and a Sentinel setup, also marked ``redis_topology``).

The Redis server itself (``redis_url``, ``spawn_redis``) comes from tests/conftest.py. ``drop_idle_subscribers(url)``
drops the subscribers that go quiet, as Redis's ``timeout`` would if it applied to them (it never does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from gateway.config.load import StoreConfig
from gateway.store import MemoryStore, Store, open_store, parse_redis_url
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


# --- subscribers that go quiet -------------------------------------------------------------------------

# Redis's `timeout` never applies to Pub/Sub clients (redis-server 7.0.15 here: under `timeout 1` a plain
# client is dropped after 1 s, a subscriber idle for 4 s stays), so a test of the feed's pings against it
# cannot fail. What the pings are for, a NAT, load balancer or firewall dropping an idle TCP connection,
# is done here with Redis's own idle count (CLIENT LIST's `idle`, the one `timeout` reads) and CLIENT KILL.
IDLE_LIMIT_S = 2        # whole seconds, as Redis counts them: dropped after 1 to 2 s without a word
SWEEP_S = 0.05
DROP_WAIT_S = 10.0      # bound on waiting for a silent subscriber to be dropped (1-2 s expected)
Node = tuple[str, int]
Client = tuple[Node, int]   # (server, CLIENT ID)


async def data_nodes(url: str, auth: dict[str, str]) -> list[Node]:
    """The servers a store URL's subscriptions can land on: the one, every cluster node, the sentinels' master."""
    target = parse_redis_url(url)
    if target.mode == "standalone":
        parts = urlsplit(url)
        return [(parts.hostname or "127.0.0.1", parts.port or 6379)]
    host, port = target.nodes[0]
    async with Redis(host=host, port=port, decode_responses=True, socket_timeout=2,
                     **(auth if target.mode == "cluster" else {})) as seed:
        if target.mode == "cluster":
            lines = (await seed.execute_command("CLUSTER", "NODES")).splitlines()
            addrs = [line.split()[1].partition("@")[0] for line in lines]   # ip:port@bus-port
            return [(h, int(p)) for h, _, p in (addr.rpartition(":") for addr in addrs)]
        master = await seed.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.service_name)
        return [(master[0], int(master[1]))]


def resp(*args: str) -> bytes:
    """A command in RESP, as a client library sends it."""
    return f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)


SILENT_CHANNEL = "tokengate-test-silent"
SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n" + f"${len(SILENT_CHANNEL)}\r\n{SILENT_CHANNEL}\r\n:1\r\n".encode()


class IdleSubscriberReaper:
    """Every SWEEP_S, on every server: CLIENT KILL each subscriber that arrived after the reaper started (the
    sentinels' own are left alone) and has been idle for IDLE_LIMIT_S. ``seen``: the subscribers it watched;
    ``killed``: those it dropped."""

    def __init__(self, nodes: list[Node], auth: dict[str, str]) -> None:
        self.nodes, self._auth = nodes, auth
        self._admin = {node: Redis(host=node[0], port=node[1], decode_responses=True, socket_timeout=2, **auth)
                       for node in nodes}
        self._before: set[Client] = set()
        self.seen: set[Client] = set()
        self.killed: list[Client] = []
        self._task: asyncio.Task[None] | None = None
        self._silent: list[asyncio.StreamWriter] = []

    async def _subscribers(self) -> list[tuple[Client, int]]:
        """(client, idle seconds) of every subscriber now connected."""
        found = []
        for node, admin in self._admin.items():
            found += [((node, int(c["id"])), int(c["idle"])) for c in await admin.client_list(_type="pubsub")]
        return found

    async def start(self) -> None:
        self._before = {client for client, _ in await self._subscribers()}
        self._task = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            for client, idle_s in await self._subscribers():
                if client in self._before:
                    continue
                self.seen.add(client)
                if idle_s >= IDLE_LIMIT_S:
                    await self._admin[client[0]].client_kill_filter(_id=str(client[1]))
                    self.killed.append(client)
            await asyncio.sleep(SWEEP_S)

    async def _subscribe_silently(self, node: Node) -> Client:
        """A raw subscriber on ``node`` that says nothing after its SUBSCRIBE."""
        reader, writer = await asyncio.open_connection(*node)
        self._silent.append(writer)
        if password := self._auth.get("password"):
            writer.write(resp("AUTH", *filter(None, [self._auth.get("username"), password])))
            assert await asyncio.wait_for(reader.readline(), 5) == b"+OK\r\n"
        writer.write(resp("CLIENT", "ID"))
        client_id = int((await asyncio.wait_for(reader.readline(), 5)).strip(b":\r\n"))
        writer.write(resp("SUBSCRIBE", SILENT_CHANNEL))
        assert await asyncio.wait_for(reader.readexactly(len(SUBSCRIBED)), 5) == SUBSCRIBED
        return node, client_id

    async def outwait_silent_subscribers(self) -> list[Client]:
        """Subscribe a client that says nothing more on every server and wait (bounded) until each is dropped;
        those clients. A subscriber that was there before them and said nothing since went in the same sweep
        (its idle count is at least theirs): one still standing has spoken within the limit."""
        silent = [await self._subscribe_silently(node) for node in self.nodes]
        deadline = time.monotonic() + DROP_WAIT_S
        while not set(silent) <= set(self.killed):
            assert self._task is not None
            if self._task.done():
                self._task.result()   # the sweep's error
                raise AssertionError("the reaper stopped")
            assert time.monotonic() < deadline, f"silent subscribers not dropped within {DROP_WAIT_S}s"
            await asyncio.sleep(SWEEP_S)
        return silent

    async def stop(self) -> None:
        for writer in self._silent:
            writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for admin in self._admin.values():
            await admin.aclose()


@contextlib.asynccontextmanager
async def drop_idle_subscribers(url: str) -> AsyncIterator[IdleSubscriberReaper]:
    """While inside, the servers of ``url`` drop every new subscriber idle for IDLE_LIMIT_S (see above)."""
    target, parts = parse_redis_url(url), urlsplit(url)
    given = target.options if target.mode != "standalone" else {"username": parts.username, "password": parts.password}
    auth = {k: v for k in ("username", "password") if (v := given.get(k))}
    reaper = IdleSubscriberReaper(await data_nodes(url, auth), auth)
    await reaper.start()
    try:
        yield reaper
    finally:
        await reaper.stop()
