"""The admin port's own bearer token (admin.token), through the real `tokengate serve` process."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import bearer
from tests.integration.test_revocation import fleet_config, status_of

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
