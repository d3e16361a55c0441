"""A DPoP proof is spent once across the fleet: two `tokengate serve` processes share one real Redis and
one public URL (so a proof's htu fits both); a proof used on one instance is refused by the other.
On Redis Cluster and Sentinel: test_fleet_topologies.py."""

from __future__ import annotations

import secrets
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.admin.test_revocation import clean_redis, fleet_config
from tests.integration.admin.test_session_end_fleet import PASSWORD, add_user
from tests.unit.steps.dpop_proofs import ath, good_header, key, sign

pytestmark = pytest.mark.integration
__all__ = ["clean_redis"]   # the fixture, by name

PUBLIC_URL = "https://api.example.test"   # what clients use; the instances sit behind one load balancer


def proof(method: str, path: str, token: str | None = None) -> str:
    claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": PUBLIC_URL + path,
                              "iat": int(time.time())}
    if token is not None:
        claims["ath"] = ath(token)
    return sign(good_header("ec256"), claims, key("ec256"), "ES256")


async def get_orders(http: aiohttp.ClientSession, url: str, token: str, dpop: str) -> tuple[int, str | None]:
    async with http.get(f"{url}/api/orders", headers={"Authorization": f"DPoP {token}", "DPoP": dpop}) as resp:
        body = await resp.json() if resp.status != 200 else {}
        return resp.status, body.get("code")


async def test_a_proof_used_on_one_instance_is_refused_by_another(start_gateway, echo_upstream, keys_dir,
                                                                   clean_redis, http):
    await add_user(clean_redis, "alice")
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    cfg["auth"] = {**cfg.get("auth", {}), "public_url": PUBLIC_URL}
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    async with http.post(f"{first.url}/auth/login", json={"username": "alice", "password": PASSWORD},
                         headers={"DPoP": proof("POST", "/auth/login")}) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    assert tokens["token_type"] == "DPoP"
    token = tokens["access_token"]
    spent = proof("GET", "/api/orders", token)
    assert await get_orders(http, first.url, token, spent) == (200, None)
    assert await get_orders(http, second.url, token, spent) == (401, "invalid_dpop_proof")   # replayed elsewhere
    assert await get_orders(http, second.url, token, proof("GET", "/api/orders", token)) == (200, None)
