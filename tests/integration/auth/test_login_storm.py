"""Password hashing runs off the event loop: proxied traffic keeps flowing through a login storm."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline import GATEWAY
from gateway.server.app import build_app

pytestmark = pytest.mark.integration
LOGINS = 50


async def test_proxied_requests_keep_flowing_while_50_logins_hash(make_config, echo_upstream, aiohttp_client):
    cfg = await asyncio.to_thread(
        make_config, upstreams={"accounts": {"url": str(echo_upstream.make_url("")).rstrip("/")}},
        auth={"users": "store", "rate_limits": {"login": "1000/min"}})
    client = await aiohttp_client(build_app(cfg))
    gw = client.app[GATEWAY]
    await gw.users.add("bob", "correct horse battery staple", ["user"])   # the real argon2id cost
    body = {"username": "bob", "password": "correct horse battery staple"}

    async def login() -> int:
        async with client.post("/auth/login", json=body) as resp:
            await resp.read()
            return resp.status

    logins = asyncio.gather(*(login() for _ in range(LOGINS)))
    served = 0
    async with asyncio.timeout(120):
        while not logins.done():
            async with client.get(f"/api/public/{served}") as resp:
                assert resp.status == 200
            served += 1
        assert await logins == [200] * LOGINS
    # Had the hashes run on the loop, nothing could be proxied until the last one finished.
    assert served >= LOGINS
