"""Delegated login and the sign-in page in a real browser: headless chromium (playwright) against the gateway
app on a loopback socket, the test OP (oidc-provider, op/op.js) and a small web app behind the gateway.

The app (``Shop``, an aiohttp upstream) serves a public page, ``/app/home``, whose own inline script calls a
protected route (``POST /api/orders``, role admin) as a browser-mode page does: the access cookie goes by
itself (``credentials: "same-origin"``), the CSRF cookie is read from ``document.cookie`` and sent back as
``X-CSRF-Token``. The page then shows the answer's status and the identity the app received (``X-User-Id``),
so a test sees what the browser itself achieved. ``/account`` is a protected page (role admin) of the app.

Where the gateway is reached: the provider runs at http://127.0.0.1:PORT. A gateway at http://localhost:PORT
is then on another site than the provider, as in production (cookies with SameSite take the site of the
host: localhost and 127.0.0.1 differ, ports do not count); a gateway at 127.0.0.1 shares the provider's site.

Secure cookies over plain http: the gateway keeps its default (``refresh_cookie.secure: true``, so every cookie
it sets is ``Secure``). Chromium treats http://127.0.0.1 and http://localhost as potentially trustworthy
(secure contexts) and keeps and sends Secure cookies there, so these tests run the production cookie
settings; the tests assert that the session cookies the browser holds are Secure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from gateway.auth.oauth.pending import COOKIE_PREFIX
from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app
from gateway.steps.cookies import ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER

from .opdriver import OpenIdProvider

pytestmark = pytest.mark.integration

REFRESH_COOKIE = "refresh_token"   # auth.refresh_cookie.name's default
SESSION_COOKIES = frozenset({ACCESS_COOKIE, CSRF_COOKIE, REFRESH_COOKIE})
PASSWORD = "a long password 123"

# The app's page: its own script (served by the app, not by the gateway) calls the protected route with
# the access cookie and the CSRF double-submit header, then shows what came back.
HOME_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>shop</title></head><body>
<p>status: <output id="status">pending</output></p>
<p>signed in as: <output id="who"></output></p>
<script>
const csrf = document.cookie.split("; ").filter((c) => c.startsWith("%(cookie)s="))
  .map((c) => c.slice("%(cookie)s=".length))[0] || "";
fetch("/api/orders", {method: "POST", credentials: "same-origin",
                      headers: {"%(header)s": csrf, "Content-Type": "application/json"}, body: "{}"})
  .then(async (resp) => {
    const body = resp.ok ? await resp.json() : {};
    document.getElementById("who").textContent = body.user || "";
    document.getElementById("status").textContent = String(resp.status);
  })
  .catch((err) => { document.getElementById("status").textContent = "failed: " + err; });
</script></body></html>""" % {"cookie": CSRF_COOKIE, "header": CSRF_HEADER}


@dataclass
class Shop:
    """The app behind the gateway; ``orders``: the headers of each ``POST /api/orders`` it received."""

    server: TestServer
    orders: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class Gw:
    server: TestServer
    host: str
    shop: Shop

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.port}"

    def callback(self, provider: str = "corp") -> str:
        return f"{self.url}/auth/oauth/{provider}/callback"


MakeGw = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def shop(aiohttp_server: Any) -> Shop:
    async def home(_: web.Request) -> web.Response:
        return web.Response(text=HOME_PAGE, content_type="text/html")

    async def orders(request: web.Request) -> web.Response:
        received: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            received.setdefault(name.lower(), []).append(value)
        shop.orders.append(received)
        return web.json_response({"user": request.headers.get("X-User-Id")})

    async def account(request: web.Request) -> web.Response:
        return web.Response(text=f"<p id='who'>{request.headers.get('X-User-Id', '')}</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/app/home", home)
    app.router.add_post("/api/orders", orders)
    app.router.add_get("/account", account)
    shop = Shop(await aiohttp_server(app))
    return shop


@pytest.fixture
async def make_gw(make_config: Callable[..., GatewayConfig], aiohttp_server: Any, oidc_op: OpenIdProvider,
                  shop: Shop) -> MakeGw:
    """make_gw(host) -> the gateway in browser mode (access cookie + CSRF) with the test OP as ``corp`` and
    password logins, in front of the shop, reached by the browser at http://HOST:PORT (its callback URL
    registered at the OP). Cookie settings: the defaults (Secure, SameSite=Strict)."""

    async def make(host: str = "127.0.0.1") -> Gw:
        corp = {"issuer": oidc_op.issuer, "client_id": "tokengate-test", "client_secret": oidc_op.client_secret,
                "display_name": "Corp SSO", "scopes": ["openid", "email", "profile", "groups"],
                "roles": {"claim": "groups", "map": {"gateway-admins": ["admin"]}, "default": ["user"]}}
        cfg = make_config(
            auth={"providers": {"corp": corp}, "access_cookie": True},
            upstreams={"shop": {"url": shop.url}},
            routes=[{"path": "/app", "upstream": "shop", "public": True},
                    {"path": "/account", "methods": ["GET"], "upstream": "shop", "roles": ["admin"]},
                    {"path": "/api/orders", "methods": ["POST"], "upstream": "shop", "roles": ["admin"]}])
        gw = Gw(await aiohttp_server(build_app(cfg)), host, shop)
        await oidc_op.allow_redirect_uris([gw.callback()])
        return gw

    return make


async def session_cookies(page: Page) -> dict[str, dict[str, Any]]:
    """The gateway's session cookies the browser holds, by name."""
    return {c["name"]: dict(c) for c in await page.context.cookies() if c["name"] in SESSION_COOKIES}


async def sign_in_at_op(page: Page, account: str) -> None:
    """From the gateway's sign-in page: the provider's button, then the OP's development login and consent."""
    await page.get_by_role("link", name="Sign in with Corp SSO").click()
    await page.fill("input[name=login]", account)                # the OP's login page: any password
    await page.fill("input[name=password]", "any password")
    await page.click("button[type=submit]")
    await expect(page.locator("input[name=prompt]")).to_have_value("consent")
    await page.get_by_role("button", name="Continue").click()    # the consent page


async def sign_in_with_password(page: Page, username: str, password: str) -> None:
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def expect_app_called_api_as(page: Page, gw: Gw, user: str) -> None:
    """The browser is on the app's page and the page's own call went through the gateway as ``user``."""
    await page.wait_for_url(f"{gw.url}/app/home")
    await expect(page.locator("#status")).to_have_text("200")
    await expect(page.locator("#who")).to_have_text(user)
    sent = gw.shop.orders[-1]
    assert sent["x-user-id"] == [user]
    # The gateway's cookies (the credential itself) never reach the app.
    assert not [c for c in sent.get("cookie", []) if any(f"{name}=" in c for name in SESSION_COOKIES)]


async def expect_secure_session_cookies(page: Page, gw: Gw) -> dict[str, dict[str, Any]]:
    """The browser holds the session's cookies; every cookie of the gateway's host is Secure, and all but the
    CSRF cookie (script-readable by design: the page copies it into the header) are HttpOnly."""
    cookies = await session_cookies(page)
    assert set(cookies) == SESSION_COOKIES
    ours = [c for c in await page.context.cookies() if c["domain"] == gw.host]
    assert [c["name"] for c in ours if not c["httpOnly"]] == [CSRF_COOKIE]
    assert all(c["secure"] for c in ours)   # Secure cookies kept over plain http on loopback
    return cookies


async def test_a_provider_login_in_the_browser_lands_on_rd_whose_page_calls_the_api(
        make_gw: MakeGw, browser_page: Page) -> None:
    gw = await make_gw("localhost")   # on another site than the provider, as in production
    page = browser_page
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url) if frame == page.main_frame else None)

    await page.goto(f"{gw.url}/auth/login?rd=/app/home")
    await sign_in_at_op(page, "alice")

    await expect_app_called_api_as(page, gw, "corp:alice")
    cookies = await expect_secure_session_cookies(page, gw)
    assert not [c["name"] for c in await page.context.cookies() if c["name"].startswith(COOKIE_PREFIX)]
    # No token in any address the tab went through (the callback's code and state are not tokens).
    tokens = [cookies[ACCESS_COOKIE]["value"], cookies[REFRESH_COOKIE]["value"]]
    assert page.url == f"{gw.url}/app/home"
    assert not [url for url in visited if any(t in url for t in tokens)
                or any("token" in k for k, _ in parse_qsl(urlsplit(url).query) + parse_qsl(urlsplit(url).fragment))]


async def test_the_password_form_in_the_browser_lands_on_rd_whose_page_calls_the_api(
        make_gw: MakeGw, browser_page: Page) -> None:
    gw = await make_gw()
    page = browser_page
    await gw.server.app[GATEWAY].users.add("dora", PASSWORD, ["admin"])
    await page.goto(f"{gw.url}/auth/login?rd=/app/home")
    await sign_in_with_password(page, "dora", PASSWORD)
    await expect_app_called_api_as(page, gw, "dora")
    await expect_secure_session_cookies(page, gw)


async def test_failed_logins_in_the_browser_show_why_and_leave_no_session(
        make_gw: MakeGw, browser_page: Page) -> None:
    gw = await make_gw()
    page = browser_page
    await gw.server.app[GATEWAY].users.add("dora", PASSWORD, ["admin"])

    # A wrong password: the sign-in page again, the error announced, the username kept.
    await page.goto(f"{gw.url}/auth/login?rd=/app/home")
    async with page.expect_navigation() as wrong:
        await sign_in_with_password(page, "dora", "not the password")
    refused = await wrong.value
    assert refused is not None and refused.status == 401
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(page.get_by_label("Username")).to_have_value("dora")
    assert await session_cookies(page) == {}

    # Cancelled at the provider: the OP sends access_denied back; the gateway's HTML error page links back.
    await page.get_by_role("link", name="Sign in with Corp SSO").click()
    async with page.expect_navigation(url=lambda url: url.startswith(gw.callback() + "?")) as cancelled:
        await page.get_by_role("link", name="[ Cancel ]").click()   # the OP's login page
    denied = await cancelled.value
    assert denied is not None and denied.status == 401
    await expect(page.get_by_role("link", name="Back to sign in")).to_have_attribute("href", "/auth/login")
    assert await session_cookies(page) == {}
    assert not [c["name"] for c in await page.context.cookies() if c["name"].startswith(COOKIE_PREFIX)]

    # A callback whose state no login of this browser started (forged, or replayed from elsewhere).
    forged = await page.goto(f"{gw.callback()}?code=forged&state=forged-state")
    assert forged is not None and forged.status == 400
    await page.get_by_role("link", name="Back to sign in").click()
    await page.wait_for_url(f"{gw.url}/auth/login")
    await expect(page.get_by_role("link", name="Sign in with Corp SSO")).to_be_visible()
    assert await session_cookies(page) == {}


async def test_a_provider_login_lands_signed_in_on_a_protected_rd_page(make_gw: MakeGw, browser_page: Page) -> None:
    gw = await make_gw("localhost")   # on another site than the provider, as in production
    page = browser_page
    await page.goto(f"{gw.url}/auth/login?rd=/account")
    async with page.expect_navigation(url=f"{gw.url}/account") as landed:
        await sign_in_at_op(page, "alice")
    resp = await landed.value
    status = resp.status if resp is not None else None
    await expect_secure_session_cookies(page, gw)   # the login itself worked: the browser holds the session
    # The request for rd is the last hop of a navigation that began on the provider's site: a SameSite=Strict
    # access cookie would not be sent on it (nor on a reload), so the access and CSRF cookies are Lax.
    assert status == 200, f"after a provider login the protected rd page answered {status}"
    await expect(page.locator("#who")).to_have_text("corp:alice")
