"""The browser kit works: Debian's chromium, driven by playwright, clicks through a loopback page and
signs in at the test OP's own pages, landing on the client's redirect URI."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from .opdriver import OpenIdProvider, auth_request

pytestmark = pytest.mark.integration

BUTTON_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>kit</title></head><body>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked'">Go</button>
<p id="out">waiting</p></body></html>"""


async def test_chromium_clicks_a_button_on_a_loopback_page(aiohttp_server: Any, browser_page: Page) -> None:
    async def button_page(_: web.Request) -> web.Response:
        return web.Response(text=BUTTON_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", button_page)
    server = await aiohttp_server(app)
    await browser_page.goto(str(server.make_url("/")))
    await expect(browser_page.locator("#out")).to_have_text("waiting")
    await browser_page.click("#go")
    await expect(browser_page.locator("#out")).to_have_text("clicked")


async def test_chromium_signs_in_at_the_op_and_lands_on_the_redirect_uri(
        oidc_op: OpenIdProvider, aiohttp_server: Any, browser_page: Page) -> None:
    landed: list[dict[str, str]] = []

    async def callback(request: web.Request) -> web.Response:
        landed.append(dict(request.query))
        return web.Response(text="<p id='landed'>back at the client</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/auth/oauth/corp/callback", callback)
    client = await aiohttp_server(app)
    redirect_uri = str(client.make_url("/auth/oauth/corp/callback"))
    await oidc_op.allow_redirect_uris([redirect_uri])
    request = auth_request(oidc_op, redirect_uri)

    await browser_page.goto(str(request.url))
    await browser_page.fill("input[name=login]", "carol")
    await browser_page.fill("input[name=password]", "any password")
    await browser_page.click("button[type=submit]")           # the login page
    await expect(browser_page.locator("input[name=prompt]")).to_have_value("consent")
    await browser_page.click("button[type=submit]")           # the consent page: Continue
    await expect(browser_page.locator("#landed")).to_be_visible()
    assert len(landed) == 1
    assert (landed[0]["state"], landed[0]["iss"]) == (request.state, oidc_op.issuer)
    assert landed[0]["code"]
