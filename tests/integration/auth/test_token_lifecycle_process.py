"""The token lifecycle through the real `tokengate serve` process: login, proxy, refresh, logout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.auth.accounts.passwords import PasswordHasher
from tests.conftest import CHEAP_ARGON2 as CHEAP, bearer
from tests.integration.server.test_gateway_process import gateway_config

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"


def users_file(tmp_path: Path) -> Path:
    hasher = PasswordHasher(CHEAP)
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump([{"username": "dora", "password_hash": hasher.hash_sync(PASSWORD),
                                     "roles": ["user"], "email": "dora@example.test", "disabled": False}]))
    hasher.close()
    return path


@pytest.fixture
async def lifecycle_gateway(start_gateway, echo_upstream, keys_dir, tmp_path, request) -> Any:
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["auth"] = {"users": {"file": str(users_file(tmp_path))}, **getattr(request, "param", {})}
    return await start_gateway(cfg)


async def login(http, gw) -> dict[str, Any]:
    async with http.post(f"{gw.url}/auth/login", json={"username": "dora", "password": PASSWORD}) as resp:
        assert resp.status == 200
        assert "HttpOnly" in resp.headers["Set-Cookie"]
        return await resp.json()


async def test_login_refresh_logout_through_the_real_process(lifecycle_gateway, http):
    gw = lifecycle_gateway
    tokens = await login(http, gw)
    async with http.get(f"{gw.url}/api/orders", headers=bearer(tokens["access_token"])) as resp:
        assert resp.status == 200
        seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
        assert seen["x-user-id"] == "dora" and seen["x-user-email"] == "dora@example.test"
    async with http.post(f"{gw.url}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
        fresh = await resp.json()
    async with http.post(f"{gw.url}/auth/logout", headers=bearer(fresh["access_token"]),
                         json={"refresh_token": fresh["refresh_token"]}) as resp:
        assert resp.status == 204
    async with http.get(f"{gw.url}/api/orders", headers=bearer(fresh["access_token"])) as resp:
        assert resp.status == 401
        assert "revoked" in (await resp.json())["error_description"]
    async with http.post(f"{gw.url}/auth/refresh", json={"refresh_token": fresh["refresh_token"]}) as resp:
        assert resp.status == 401
    for secret in (PASSWORD, tokens["access_token"], tokens["refresh_token"], fresh["refresh_token"]):
        assert secret not in gw.log()


@pytest.mark.parametrize("lifecycle_gateway", [{"access_cookie": True, "refresh_cookie": {"secure": False}}],
                         indirect=True)
async def test_browser_mode_cookie_needs_the_csrf_header_on_unsafe_methods(lifecycle_gateway):
    gw = lifecycle_gateway
    # unsafe=True: aiohttp's jar otherwise ignores cookies set by an IP address like 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await _browse(gw, browser)


async def _browse(gw, http) -> None:
    await login(http, gw)   # the jar keeps the access, refresh and CSRF cookies
    csrf = next(c.value for c in http.cookie_jar if c.key == "csrf_token")
    async with http.get(f"{gw.url}/api/orders") as resp:           # safe method: the cookie is enough
        assert resp.status == 200
    async with http.post(f"{gw.url}/api/accounts/7/profile") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "csrf_failed"
    async with http.post(f"{gw.url}/api/accounts/7/profile", headers={"X-CSRF-Token": csrf}) as resp:
        assert resp.status == 200
