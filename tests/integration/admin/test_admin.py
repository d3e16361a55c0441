"""The admin port through the real `tokengate serve` process: its own bearer token (admin.token), and
what /readyz says while the store is down under each `store.readiness`."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import bearer
from tests.integration.admin.test_revocation import fleet_config, status_of
from tests.redisproc import free_port

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "admin-token-0123456789-abcdefghijklmnopqrstuvwxyz"


async def _post_revoke(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                       headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    async with http.post(f"{url}/admin/revoke", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("WWW-Authenticate", "")


async def test_admin_token_guards_the_admin_api_but_not_the_probes(start_gateway, echo_upstream, keys_dir, http,
                                                                   mint):
    cfg = fleet_config(keys_dir, echo_upstream, "memory://")
    cfg["admin"] = {"token": ADMIN_TOKEN}
    gw = await start_gateway(cfg)
    for probe in ("/healthz", "/readyz"):
        async with http.get(f"{gw.admin_url}{probe}") as resp:
            assert resp.status == 200
            if probe == "/readyz":
                assert (await resp.json())["store"] == {"state": "up", "readiness": "require", "on_error": "deny"}
    token = mint(roles=["user"])
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    status, body, challenge = await _post_revoke(http, gw.admin_url, {"jti": jti}, {})
    assert (status, body.get("code"), challenge) == (401, "missing_token", 'Bearer realm="tokengate"'), body
    status, body, _ = await _post_revoke(http, gw.admin_url, {"jti": jti}, bearer(ADMIN_TOKEN[:-1] + "X"))
    assert (status, body["code"]) == (401, "invalid_token")
    assert (await status_of(http, gw, token))[0] == 200   # refused attempts revoked nothing
    status, body, _ = await _post_revoke(http, gw.admin_url, {"jti": jti}, bearer(ADMIN_TOKEN))
    assert status == 200 and body["revoked"]["id"] == jti
    assert (await status_of(http, gw, token))[0] == 401
    assert ADMIN_TOKEN not in gw.log()


@pytest.mark.parametrize("readiness, ready_status", [("require", 503), ("ignore", 200)])
async def test_readyz_names_the_store_state_and_counts_it_unless_readiness_is_ignore(
        spawn_gateway_unready, keys_dir, echo_upstream, http, mint, readiness, ready_status):
    dead = f"redis://127.0.0.1:{free_port()}"   # nothing listens: the store is down from the start
    gw = await spawn_gateway_unready(fleet_config(keys_dir, echo_upstream, dead, readiness=readiness))
    async with http.get(f"{gw.admin_url}/readyz") as resp:
        assert resp.status == ready_status
        body = await resp.json()
    assert body["ready"] is (ready_status == 200)
    assert body["checks"] == {"config": True, "keys": True, "accepting": True, "store": False}
    assert body["store"] == {"state": "down", "readiness": readiness, "on_error": "deny"}
    # Either way the gateway answers for itself: fail closed where a token is needed, public routes served.
    status, answer = await status_of(http, gw, mint(roles=["user"]))
    assert (status, answer["code"]) == (503, "dependency_unavailable")
    async with http.get(f"{gw.url}/api/public/x") as resp:
        assert resp.status == 200
