"""Ending a session at fleet speed: two `tokengate serve` processes share one real Redis; a session ended
on one (DELETE {prefix}/sessions/{id}) has its access token refused by the other within a second, cached
or not, and its refresh token answers session_ended on both. Collected again on Cluster and Sentinel by
test_fleet_topologies.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from gateway.auth.accounts.directory import StoreUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.config.load import StoreConfig
from gateway.store import open_store
from tests.conftest import CHEAP_ARGON2, bearer
from tests.integration.admin.test_revocation import PROPAGATION_BOUND_S, clean_redis, fleet_config, status_of
from tests.integration.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration
__all__ = ["clean_redis"]   # the fixture, by name

REVOCATION_TARGET_S = 1.0   # DESIGN: a revocation reaches every instance in under a second
PASSWORD = "correct horse battery staple"


async def add_user(store_url: str, username: str) -> None:
    store = await open_store(StoreConfig(url=store_url))
    hasher = PasswordHasher(CHEAP_ARGON2)
    try:
        await StoreUsers(store, hasher).add(username, PASSWORD, roles=["user"])
    finally:
        hasher.close()
        await store.close()


async def login(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with http.post(f"{gw.url}/auth/login", json={"username": "alice", "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def seconds_until_refused(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> float:
    """Poll (bounded by PROPAGATION_BOUND_S) until ``gw`` refuses ``token`` as revoked; how long it took."""
    start = time.monotonic()
    while True:
        status, body = await status_of(http, gw, token)
        if status == 401:
            assert body["code"] == "token_revoked"
            return time.monotonic() - start
        assert time.monotonic() - start < PROPAGATION_BOUND_S, f"still accepted after {PROPAGATION_BOUND_S}s"
        await asyncio.sleep(0.01)


async def test_a_session_ended_on_one_instance_is_refused_by_another_within_a_second(
        start_gateway, echo_upstream, keys_dir, clean_redis, http):
    await add_user(clean_redis, "alice")
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    doomed, mine = await login(http, first), await login(http, second)
    for gw in (first, second):   # each instance has it in its verified-token cache now
        assert (await status_of(http, gw, doomed["access_token"]))[0] == 200
    sid = jwt.decode(doomed["access_token"], options={"verify_signature": False})["sid"]
    async with http.delete(f"{first.url}/auth/sessions/{sid}", headers=bearer(mine["access_token"])) as resp:
        assert resp.status == 204
    took_s = await seconds_until_refused(http, second, doomed["access_token"])
    assert took_s < REVOCATION_TARGET_S, f"the other instance learnt it after {took_s:.3f}s"
    assert (await status_of(http, first, doomed["access_token"]))[0] == 401
    for gw in (first, second):
        async with http.post(f"{gw.url}/auth/refresh", json={"refresh_token": doomed["refresh_token"]}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (401, "session_ended")
        assert (await status_of(http, gw, mine["access_token"]))[0] == 200   # the other session lives on
