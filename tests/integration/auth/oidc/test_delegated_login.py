"""Delegated login against a real OpenID Provider (oidc-provider, op/op.js): the whole flow through the
gateway app on a real socket, driven like a browser (cookies kept, redirects followed by hand)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from gateway.auth.oauth.pending import COOKIE_PREFIX
from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app

from .gwkit import Gw
from .opdriver import OpenIdProvider, sign_in_at_op

pytestmark = pytest.mark.integration


MakeGw = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def make_gw(make_config: Callable[..., GatewayConfig], aiohttp_server: Any, oidc_op: OpenIdProvider,
                  echo_upstream: TestServer) -> AsyncIterator[MakeGw]:
    async def make(**provider: Any) -> Gw:
        corp = {"issuer": oidc_op.issuer, "client_id": "tokengate-test", "client_secret": oidc_op.client_secret,
                "scopes": ["openid", "email", "profile", "groups"],
                "roles": {"claim": "groups", "map": {"gateway-admins": ["admin"]}, "default": ["user"]}, **provider}
        other = {"issuer": oidc_op.issuer, "client_id": "tokengate-post", "client_secret": oidc_op.client_secret,
                 "client_auth": "client_secret_post"}
        public = {"issuer": oidc_op.issuer, "client_id": "tokengate-public", "client_auth": "none"}
        upstream = str(echo_upstream.make_url("")).rstrip("/")
        cfg = make_config(auth={"providers": {"corp": corp, "other": other, "public": public}, "redirect_allowlist":
                                ["https://app.example.test"], "refresh_cookie": {"secure": True}},
                          upstreams={"accounts": {"url": upstream}, "orders": {"url": upstream}})
        server = await aiohttp_server(build_app(cfg))
        gw = Gw(server, cfg)
        await oidc_op.allow_redirect_uris([gw.callback(name) for name in ("corp", "other", "public")],
                                          [f"{gw.url}/auth/login"])
        return gw

    yield make


async def start(ua: aiohttp.ClientSession, gw: Gw, provider: str = "corp", rd: str = "/dashboard"
                ) -> aiohttp.ClientResponse:
    return await ua.get(f"{gw.url}/auth/oauth/{provider}/start", params={"rd": rd}, allow_redirects=False)


async def sign_in(ua: aiohttp.ClientSession, gw: Gw, account: str, provider: str = "corp",
                  rd: str = "/dashboard") -> aiohttp.ClientResponse:
    started = await start(ua, gw, provider, rd)
    assert started.status == 302, await started.text()
    back = await sign_in_at_op(ua, started.headers["Location"], account)
    return await ua.get(str(back), allow_redirects=False)


async def test_a_provider_login_issues_the_gateways_own_session_and_goes_to_rd(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession], oidc_op: OpenIdProvider) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await start(ua, gw)
    assert started.status == 302
    query = parse_qs(urlsplit(started.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["client_id"] == ["tokengate-test"]
    assert query["redirect_uri"] == [gw.callback()] and query["state"][0] and query["nonce"][0]
    pending = [c for c in started.cookies.values() if c.key.startswith(COOKIE_PREFIX)]
    assert len(pending) == 1
    assert pending[0]["httponly"] and pending[0]["secure"] and pending[0]["samesite"] == "Lax"
    assert pending[0]["max-age"] == "600" and pending[0]["path"] == "/auth/oauth/corp/callback"

    back = await sign_in_at_op(ua, started.headers["Location"], "alice")
    assert parse_qs(back.query_string)["iss"] == [oidc_op.issuer]
    done = await ua.get(str(back), allow_redirects=False)
    assert done.status == 302 and done.headers["Location"] == "/dashboard"
    assert "refresh_token" in done.cookies
    account = await gw.server.app[GATEWAY].users.get("corp:alice")
    assert account is not None and account.roles == ("admin",) and account.password_hash == ""

    refreshed = await ua.post(f"{gw.url}/auth/refresh")
    assert refreshed.status == 200
    access = (await refreshed.json())["access_token"]
    claims = jwt.decode(access, options={"verify_signature": False})
    assert claims["sub"] == "corp:alice" and claims["roles"] == ["admin"]
    admin = await ua.get(f"{gw.url}/api/admin/x", headers={"Authorization": f"Bearer {access}"})
    assert admin.status == 200


async def test_a_callback_works_once(make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await start(ua, gw)
    back = await sign_in_at_op(ua, started.headers["Location"], "alice")
    sealed = {c.key: c.value for c in ua.cookie_jar if c.key.startswith(COOKIE_PREFIX)}
    assert (await ua.get(str(back), allow_redirects=False)).status == 302
    # The same answer again, with the pending-login cookie put back: the state is used.
    replay = make_user_agent(gw.url)
    replay.cookie_jar.update_cookies(sealed, response_url=aiohttp.client.URL(gw.callback()))
    again = await replay.get(str(back), allow_redirects=False)
    assert again.status == 400 and again.content_type == "text/html" and "refresh_token" not in again.cookies


async def test_a_callback_for_another_provider_never_finishes_the_login(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await start(ua, gw, "corp")
    back = await sign_in_at_op(ua, started.headers["Location"], "alice")
    mixed = str(back).replace("/oauth/corp/", "/oauth/other/")
    resp = await ua.get(mixed, allow_redirects=False)
    assert resp.status == 400 and "refresh_token" not in resp.cookies


async def test_several_logins_in_progress_do_not_break_each_other(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    first, second = await start(ua, gw, rd="/one"), await start(ua, gw, rd="/two")
    back_second = await sign_in_at_op(ua, second.headers["Location"], "alice")
    back_first = await sign_in_at_op(ua, first.headers["Location"], "alice")
    assert (await ua.get(str(back_first), allow_redirects=False)).headers["Location"] == "/one"
    assert (await ua.get(str(back_second), allow_redirects=False)).headers["Location"] == "/two"


async def test_the_client_secret_post_provider_signs_in_too(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    done = await sign_in(make_user_agent(gw.url), gw, "carol", provider="other")
    assert done.status == 302, await done.text()
    account = await gw.server.app[GATEWAY].users.get("other:carol")
    assert account is not None and account.roles == ("user",)


async def test_a_public_client_signs_in_with_pkce_alone(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    done = await sign_in(make_user_agent(gw.url), gw, "carol", provider="public")
    assert done.status == 302 and "refresh_token" in done.cookies, await done.text()


async def test_a_verified_email_links_to_the_local_account_only_when_allowed(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession], oidc_op: OpenIdProvider) -> None:
    gw = await make_gw(link_by_verified_email=True)
    users = gw.server.app[GATEWAY].users
    await users.add("carol-local", "a long password 123", ["admin"], "CAROL@example.test")
    await users.add("bob-local", "a long password 123", ["admin"], "bob@example.test")
    carol = make_user_agent(gw.url)
    assert (await sign_in(carol, gw, "carol")).status == 302
    claims = jwt.decode(await _access_token(carol, gw), options={"verify_signature": False})
    assert claims["sub"] == "carol-local" and claims["roles"] == ["admin"]
    bob = make_user_agent(gw.url)
    assert (await sign_in(bob, gw, "bob")).status == 302   # bob's address is not verified: no link
    claims = jwt.decode(await _access_token(bob, gw), options={"verify_signature": False})
    assert claims["sub"] == "corp:bob" and claims["roles"] == ["user"]


async def _access_token(ua: aiohttp.ClientSession, gw: Gw) -> str:
    """A fresh access token of the session ``ua`` holds (its refresh cookie, rotated)."""
    resp = await ua.post(f"{gw.url}/auth/refresh")
    assert resp.status == 200
    return str((await resp.json())["access_token"])


async def test_a_disallowed_rd_is_refused_at_the_start(make_gw: MakeGw,
                                                       make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    for rd in ("//evil.test", "https://evil.test/", "/\\evil.test", "javascript:alert(1)"):
        resp = await start(ua, gw, rd=rd)
        assert resp.status == 400 and resp.content_type == "text/html", rd
        assert "Location" not in resp.headers and "evil" not in await resp.text()
    ok = await start(ua, gw, rd="https://app.example.test/home")
    assert ok.status == 302


async def test_logout_of_a_provider_session_in_a_browser_goes_to_the_providers_end_session(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession], oidc_op: OpenIdProvider) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw, "alice")).status == 302
    access = await _access_token(ua, gw)
    resp = await ua.post(f"{gw.url}/auth/logout", headers={"Authorization": f"Bearer {access}",
                                                           "Accept": "text/html"}, allow_redirects=False)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    discovery = await oidc_op.discovery()
    assert f"{location.scheme}://{location.netloc}{location.path}" == discovery["end_session_endpoint"]
    query = parse_qs(location.query)
    assert query["client_id"] == ["tokengate-test"] and query["id_token_hint"][0].count(".") == 2
    assert query["post_logout_redirect_uri"] == [f"{gw.url}/auth/login"]


async def test_unknown_provider_and_a_callback_without_state_answer_html_pages(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    unknown = await ua.get(f"{gw.url}/auth/oauth/nosuch/start", allow_redirects=False)
    assert unknown.status == 404 and unknown.content_type == "text/html"
    no_state = await ua.get(gw.callback() + "?code=x", allow_redirects=False)
    assert no_state.status == 400 and no_state.content_type == "text/html"
    assert "/auth/login" in await no_state.text()


async def test_the_sign_in_page_lists_the_providers_and_the_form(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw(display_name="Corp SSO")
    ua = make_user_agent(gw.url)
    page = await ua.get(f"{gw.url}/auth/login?rd=/after")
    html = await page.text()
    assert page.status == 200 and "Corp SSO" in html and "/auth/oauth/corp/start?rd=%2Fafter" in html
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"


async def test_the_sign_in_form_post_logs_in_with_its_csrf_token(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession]) -> None:
    gw = await make_gw()
    await gw.server.app[GATEWAY].users.add("dora", "a long password 123", ["user"])
    ua = make_user_agent(gw.url)
    page = await (await ua.get(f"{gw.url}/auth/login?rd=/after")).text()
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    wrong = await ua.post(f"{gw.url}/auth/login", data={"username": "dora", "password": "nope", "csrf_token": token,
                                                       "rd": "/after"}, allow_redirects=False)
    assert wrong.status == 401 and "Wrong username or password" in await wrong.text()
    ok = await ua.post(f"{gw.url}/auth/login", data={"username": "dora", "password": "a long password 123",
                                                    "csrf_token": token, "rd": "/after"}, allow_redirects=False)
    assert ok.status == 302 and ok.headers["Location"] == "/after" and "refresh_token" in ok.cookies


async def test_a_reload_that_changes_the_providers_is_used_by_the_next_request(
        make_gw: MakeGw, make_config: Callable[..., GatewayConfig],
        make_user_agent: Callable[..., aiohttp.ClientSession], oidc_op: OpenIdProvider) -> None:
    gw = await make_gw(display_name="Corp SSO")
    ua = make_user_agent(gw.url)
    assert "Corp SSO" in await (await ua.get(f"{gw.url}/auth/login")).text()
    renamed = {"issuer": oidc_op.issuer, "client_id": "tokengate-test", "client_secret": oidc_op.client_secret,
               "display_name": "New SSO"}
    upstreams = {name: {"url": upstream.url} for name, upstream in gw.cfg.upstreams.items()}
    cfg = make_config(auth={"providers": {"corp": renamed}}, upstreams=upstreams)
    gw.server.app[GATEWAY].apply(cfg)
    page = await (await ua.get(f"{gw.url}/auth/login")).text()
    assert "New SSO" in page and "Corp SSO" not in page and "/auth/oauth/other/" not in page
    assert (await start(ua, gw, "other")).status == 404   # gone with the reload
    assert (await sign_in(ua, gw, "alice")).status == 302


@pytest.mark.parametrize("body, content_type", [
    (b"username=\xff\xfe&password=x&csrf_token=y", "application/x-www-form-urlencoded"),
    (b"username=a&password=x", "application/x-www-form-urlencoded; charset=no-such-charset"),
    (b"username=" + b"a" * 20000, "application/x-www-form-urlencoded"),
])
async def test_an_unreadable_sign_in_form_gets_a_page_never_a_500(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession], body: bytes, content_type: str) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    resp = await ua.post(f"{gw.url}/auth/login", data=body, headers={"Content-Type": content_type},
                         allow_redirects=False)
    assert resp.status == 400 and resp.content_type == "text/html" and "refresh_token" not in resp.cookies
