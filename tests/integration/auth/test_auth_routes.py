"""/auth endpoints over real sockets, on the embedded store and on a real Redis: login, logout,
logout-all, malformed bodies and a store that is down. Fixtures here serve test_auth_routes_*.py too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import gateway.server.app as gateway_app
from gateway.answers import error_middleware
from gateway.auth.accounts.directory import StoreUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.auth.sessions import SESSION_CLAIM, hash_refresh_token
from gateway.config.load import GatewayConfig
from gateway.errors import RevokedToken
from gateway.pipeline import GATEWAY, Gateway, handle
from gateway.server.app import CONFIG, build_app
from gateway.store.base import FAMILY, RATE, REFRESH, REFRESH_FAMILY_OF
from tests.conftest import CHEAP_ARGON2 as CHEAP, HS_SECRET, ISSUER, bearer, flush

PASSWORD = "correct horse battery staple"
GENEROUS = {"login": "10000/min", "refresh": "10000/min"}
WAIT_S = 10.0


@dataclass
class Auth:
    """A running gateway app with accounts alice (user), bob (admin), carol (disabled)."""

    client: TestClient
    gw: Gateway
    cfg: GatewayConfig

    async def login(self, username: str = "alice", password: str = PASSWORD, **kw: Any) -> aiohttp.ClientResponse:
        return await self.client.post(f"{self.cfg.auth.prefix}/login", json={"username": username,
                                                                             "password": password}, **kw)

    async def session(self, username: str = "alice") -> dict[str, Any]:
        """Log in; the token answer's JSON."""
        resp = await self.login(username)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def refresh(self, token: str | None = None, **kw: Any) -> aiohttp.ClientResponse:
        body = {"json": {"refresh_token": token}} if token is not None else {}
        return await self.client.post(f"{self.cfg.auth.prefix}/refresh", **body, **kw)

    async def post(self, endpoint: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.client.post(f"{self.cfg.auth.prefix}/{endpoint}", **kw)


MakeAuth = Callable[..., Awaitable[Auth]]


def assemble_app(cfg: GatewayConfig) -> web.Application:
    """build_app(cfg) once it registers the auth routes; until then the same pieces by hand."""
    app = build_app(cfg)
    if any(resource.canonical == f"{cfg.auth.prefix}/login" for resource in app.router.resources()):
        return app
    from gateway.auth.routes import add_auth_routes
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG] = cfg
    app.cleanup_ctx.append(gateway_app._gateway_context)
    add_auth_routes(app, cfg)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    url = request.getfixturevalue("redis_url")
    await flush(url)
    return url


@pytest.fixture
def make_auth(make_config: Callable[..., GatewayConfig], aiohttp_client: Any, echo_upstream: TestServer,
              store_url: str) -> MakeAuth:
    """make_auth(store_url=..., **auth section) -> Auth on a fresh app (rate limits generous unless given)."""

    async def make(*, url: str | None = None, listen: dict[str, Any] | None = None, **auth: Any) -> Auth:
        upstream = str(echo_upstream.make_url(""))
        sections = {"store": {"url": url or store_url},
                    "upstreams": {"accounts": {"url": upstream}, "orders": {"url": upstream}},
                    "auth": {"rate_limits": GENEROUS, **auth}, "listen": {"host": "127.0.0.1", **(listen or {})}}
        cfg = await asyncio.to_thread(make_config, **sections)   # writes and reads a file
        client = await aiohttp_client(assemble_app(cfg), cookie_jar=aiohttp.DummyCookieJar())
        gw = client.app[GATEWAY]
        gw.hasher.close()
        gw.hasher = PasswordHasher(CHEAP)   # closed by gw.close()
        gw.users = StoreUsers(gw.store, gw.hasher)
        if url is None:
            await add_accounts(gw)
            await until(lambda: gw.denylist.in_sync)
        return Auth(client, gw, cfg)

    return make


@pytest.fixture
async def auth(make_auth: MakeAuth) -> Auth:
    return await make_auth()


async def add_accounts(gw: Gateway) -> None:
    await gw.users.add("alice", PASSWORD, roles=["user"], email="alice@example.test")
    await gw.users.add("bob", PASSWORD, roles=["admin"])
    await gw.users.add("carol", PASSWORD, roles=["user"])
    await gw.users.set_disabled("carol", True)


async def until(check: Callable[[], Any], limit_s: float = WAIT_S) -> None:
    """Poll (bounded) until check() is true; check may be async."""
    deadline = time.monotonic() + limit_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


def claims_of(access_token: str) -> dict[str, Any]:
    return jwt.decode(access_token, HS_SECRET, algorithms=["HS256"], audience="api", issuer=ISSUER)


def set_cookies(resp: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


def cookie_header(**cookies: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


async def error_code(resp: aiohttp.ClientResponse) -> str:
    return (await resp.json())["code"]


# --- login ----------------------------------------------------------------------------------------

async def test_login_answers_a_bearer_pair_that_is_never_cached(auth: Auth) -> None:
    resp = await auth.login()
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert len(body["refresh_token"]) >= 43   # 32 random bytes, base64url


async def test_login_access_token_carries_the_accounts_roles_and_session(auth: Auth) -> None:
    claims = claims_of((await auth.session("bob"))["access_token"])
    assert claims["sub"] == "bob" and claims["roles"] == ["admin"]
    assert isinstance(claims[SESSION_CLAIM], str) and claims[SESSION_CLAIM]
    assert claims_of((await auth.session("alice"))["access_token"])["email"] == "alice@example.test"


async def test_login_token_passes_the_proxy(auth: Auth) -> None:
    token = (await auth.session())["access_token"]
    resp = await auth.client.get("/api/orders", headers=bearer(token))
    assert resp.status == 200
    assert dict((await resp.json())["headers"])["X-User-Id"] == "alice"


async def test_store_keeps_only_the_refresh_tokens_hash(auth: Auth) -> None:
    refresh_token = (await auth.session())["refresh_token"]
    record = await auth.gw.store.find_refresh(hash_refresh_token(refresh_token))
    assert record is not None and record.sub == "alice" and record.data["roles"] == ["user"]
    assert await auth.gw.store.find_refresh(refresh_token) is None


async def test_login_sets_the_refresh_cookie_as_configured(auth: Auth) -> None:
    resp = await auth.login()
    cookie = set_cookies(resp)["refresh_token"]
    assert cookie.value == (await resp.json())["refresh_token"]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/auth"
    assert cookie["max-age"] == str(7 * 86400)
    assert "access_token" not in set_cookies(resp)   # browser mode is off


async def test_refresh_cookie_follows_its_config(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_cookie={"name": "rt", "secure": False, "samesite": "lax", "path": "/"})
    cookie = set_cookies(await auth.login())["rt"]
    assert not cookie["secure"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"


async def test_refresh_token_can_travel_in_the_cookie_only(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_token_in_body=False)
    resp = await auth.login()
    assert "refresh_token" not in await resp.json()
    cookie = set_cookies(resp)["refresh_token"].value
    refreshed = await auth.client.post("/auth/refresh", cookies={"refresh_token": cookie})
    assert refreshed.status == 200
    assert "refresh_token" not in await refreshed.json()


@pytest.mark.parametrize("username, password", [("alice", "wrong password"), ("nobody", PASSWORD),
                                                ("carol", PASSWORD), ("not a username!", PASSWORD)])
async def test_every_failed_login_gets_the_same_401(auth: Auth, username: str, password: str) -> None:
    resp = await auth.login(username, password)
    assert resp.status == 401
    assert await resp.json() == {"error": "invalid_grant", "code": "invalid_credentials",
                                 "error_description": "the username or password is wrong"}
    assert "refresh_token" not in set_cookies(resp)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"[]", b'"alice"', b"\xff\xfe{}", b"{}",
                                  b'{"username": "alice"}', b'{"password": "x"}',
                                  b'{"username": 1, "password": "x"}', b'{"username": "alice", "password": null}',
                                  b'{"username": "alice", "password": ["x"]}', b'{"username": "", "password": "x"}',
                                  b'{"username": "alice", "password": "' + b"x" * 2000 + b'"}'])
async def test_malformed_login_bodies_get_400(auth: Auth, body: bytes) -> None:
    resp = await auth.post("login", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "multipart/form-data; boundary=x"])
async def test_login_refuses_what_a_cross_site_form_could_post(auth: Auth, content_type: str) -> None:
    body = json.dumps({"username": "alice", "password": PASSWORD})
    resp = await auth.post("login", data=body, headers={"Content-Type": content_type})
    assert resp.status == 400 and await error_code(resp) == "json_required"


async def test_a_form_post_without_the_sign_in_pages_csrf_token_logs_nobody_in(auth: Auth) -> None:
    # The sign-in page's form post is the one form a login takes; a cross-site form has neither the
    # page's CSRF token nor its SameSite=Strict cookie.
    resp = await auth.post("login", data={"username": "alice", "password": PASSWORD, "csrf_token": "x" * 43},
                           allow_redirects=False)
    assert resp.status == 400 and resp.content_type == "text/html"
    assert not resp.cookies and "Location" not in resp.headers


async def test_login_body_without_a_content_type_is_read_as_json(auth: Auth) -> None:
    resp = await auth.post("login", data=json.dumps({"username": "alice", "password": PASSWORD}).encode(),
                           skip_auto_headers=["Content-Type"])
    assert resp.status == 200


async def test_oversized_login_body_gets_413(auth: Auth) -> None:
    resp = await auth.post("login", data=b'{"username": "' + b"a" * 20000 + b'"}')
    assert resp.status == 413 and await error_code(resp) == "body_too_large"


async def test_deeply_nested_json_is_a_400_not_a_500(auth: Auth) -> None:
    resp = await auth.post("login", data=b"[" * 5000 + b"]" * 5000)
    assert resp.status == 400


async def test_other_methods_on_auth_endpoints_get_405(auth: Auth) -> None:
    resp = await auth.client.put("/auth/login")
    assert resp.status == 405 and resp.headers["Allow"] == "GET, POST"   # GET: the sign-in page


# --- logout ---------------------------------------------------------------------------------------

async def test_logout_denies_the_access_token_and_ends_its_session(auth: Auth) -> None:
    pair = await auth.session()
    resp = await auth.post("logout", headers={**bearer(pair["access_token"]),
                                              **cookie_header(refresh_token=pair["refresh_token"])})
    assert resp.status == 204
    cleared = set_cookies(resp)["refresh_token"]
    assert cleared["max-age"] == "0" and cleared["path"] == "/auth" and not cleared.value
    proxied = await auth.client.get("/api/orders", headers=bearer(pair["access_token"]))
    assert proxied.status == 401 and "revoked" in (await proxied.json())["error_description"]
    with pytest.raises(RevokedToken):
        auth.gw.denylist.check(await auth.gw.verifier.verify(pair["access_token"]))
    assert (await auth.refresh(pair["refresh_token"])).status == 401


async def test_logout_without_the_refresh_token_still_ends_the_session(auth: Auth) -> None:
    pair = await auth.session()
    assert (await auth.post("logout", headers=bearer(pair["access_token"]))).status == 204
    assert (await auth.refresh(pair["refresh_token"])).status == 401


async def test_logout_ends_only_its_own_session(auth: Auth) -> None:
    first, second = await auth.session(), await auth.session()
    assert (await auth.post("logout", headers=bearer(first["access_token"]))).status == 204
    assert (await auth.client.get("/api/orders", headers=bearer(second["access_token"]))).status == 200
    assert (await auth.refresh(second["refresh_token"])).status == 200


async def test_logout_cannot_end_another_subjects_session_with_its_refresh_token(auth: Auth) -> None:
    alice, bob = await auth.session("alice"), await auth.session("bob")
    resp = await auth.post("logout", headers=bearer(alice["access_token"]),
                           json={"refresh_token": bob["refresh_token"]})
    assert resp.status == 204
    assert (await auth.refresh(bob["refresh_token"])).status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.token"}])
async def test_logout_needs_a_valid_access_token(auth: Auth, headers: dict[str, str]) -> None:
    resp = await auth.post("logout", headers=headers)
    assert resp.status == 401


async def test_a_second_logout_with_the_same_token_is_refused(auth: Auth) -> None:
    pair = await auth.session()
    assert (await auth.post("logout", headers=bearer(pair["access_token"]))).status == 204
    resp = await auth.post("logout", headers=bearer(pair["access_token"]))
    assert resp.status == 401 and await error_code(resp) == "token_revoked"


# --- logout-all -----------------------------------------------------------------------------------

async def test_logout_all_ends_every_session_of_the_subject(auth: Auth) -> None:
    sessions = [await auth.session() for _ in range(3)]
    other = await auth.session("bob")
    resp = await auth.post("logout-all", headers=bearer(sessions[0]["access_token"]))
    assert resp.status == 204
    for pair in sessions:
        proxied = await auth.client.get("/api/orders", headers=bearer(pair["access_token"]))
        assert proxied.status == 401 and "revoked" in (await proxied.json())["error_description"]
        assert (await auth.refresh(pair["refresh_token"])).status == 401
    assert (await auth.client.get("/api/orders", headers=bearer(other["access_token"]))).status == 200
    assert (await auth.refresh(other["refresh_token"])).status == 200


async def test_login_right_after_logout_all_gives_a_working_token(auth: Auth) -> None:
    before = await auth.session()
    assert (await auth.post("logout-all", headers=bearer(before["access_token"]))).status == 204
    after = await auth.session()
    assert (await auth.client.get("/api/orders", headers=bearer(after["access_token"]))).status == 200
    assert (await auth.refresh(after["refresh_token"])).status == 200


async def test_logout_all_needs_an_access_token(auth: Auth) -> None:
    assert (await auth.post("logout-all")).status == 401


# --- store down -----------------------------------------------------------------------------------

async def test_store_down_answers_503_never_a_success(make_auth: MakeAuth, backend: str,
                                                      spawn_redis: Callable[..., Any]) -> None:
    redis = await asyncio.to_thread(spawn_redis) if backend == "redis" else None
    auth = await make_auth(url=redis.url if redis else "memory://")
    await add_accounts(auth.gw)
    await until(lambda: auth.gw.denylist.in_sync)
    pair = await auth.session()
    if redis is not None:
        await asyncio.to_thread(redis.kill)
    else:
        await auth.gw.store.close()
    for resp in (await auth.login(), await auth.refresh(pair["refresh_token"]),
                 await auth.post("logout", headers=bearer(pair["access_token"])),
                 await auth.post("logout-all", headers=bearer(pair["access_token"]))):
        assert resp.status == 503, await resp.text()
        assert await error_code(resp) == "dependency_unavailable"
        assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.integration)])
async def test_store_failing_mid_rotation_is_a_503_and_the_old_refresh_token_survives(
        make_auth: MakeAuth, spawn_redis: Callable[..., Any]) -> None:
    """A real Redis of the test's own fails the refresh after the gateway found the token, read the
    account and minted the next pair: at the rotation's atomic step. The client gets a 503 (never the
    minted pair), and once Redis is back the old refresh token still works: nothing half-rotated.

    Redis only: the embedded store cannot fail part-way (it fails whole when closed; see
    test_store_down_answers_503_never_a_success). How it fails: an ACL takes write access away from
    every key but the ones this refresh must write before the rotation, so Redis answers the rotation
    NOPERM, which the store treats as unavailable, like an outage. Not CLIENT PAUSE, OOM or a stopped
    server: each refresh first counts itself in its rate-limit bucket (a write), so those fail it at the
    rate limiter, and no condition to poll marks the moment between that write and the rotation.
    The ACL LOG shows the refusal struck where this test says (a move of the keys or the steps fails it)."""
    redis = await asyncio.to_thread(spawn_redis)
    auth = await make_auth(url=redis.url)
    await add_accounts(auth.gw)
    await until(lambda: auth.gw.denylist.in_sync)
    pair = await auth.session()
    family = claims_of(pair["access_token"])[SESSION_CLAIM]
    record = f"{REFRESH}{{{family}}}:"   # refresh:{<family>}:<hash>, one per token of the session
    old_record = record + hash_refresh_token(pair["refresh_token"])
    async with Redis.from_url(redis.url, decode_responses=True) as admin:
        await admin.acl_log_reset()
        # Read anything; write the rate limits, the token -> family pointers, the family and the old token's
        # record (a script needs write access to every key it is given): all this refresh touches before
        # the rotation's script, which is also given the new token's record, and is refused.
        await admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "%R~*", f"~{RATE}*",
                                    f"~{REFRESH_FAMILY_OF}*", f"~{FAMILY}*", f"~{old_record}")
        resp = await auth.refresh(pair["refresh_token"])
        [refusal] = await admin.acl_log()
        await admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "allkeys")   # Redis is back
    assert resp.status == 503, await resp.text()
    assert await error_code(resp) == "dependency_unavailable" and "Set-Cookie" not in resp.headers
    assert refusal["reason"] == "key" and refusal["client-info"]["cmd"] == "evalsha"
    assert refusal["object"].startswith(record) and refusal["object"] != old_record   # the successor's record
    again = await auth.refresh(pair["refresh_token"])
    assert again.status == 200, await again.text()
    proxied = await auth.client.get("/api/orders", headers=bearer((await again.json())["access_token"]))
    assert proxied.status == 200
