"""Delegated login against the real OpenID Provider (op/op.js) when its keys change or it goes away: a key
rotation at the provider (the gateway refetches its JWKS for the new kid), the provider down after the
gateway fetched its metadata and keys (a 503 page, then logins again once it is back), and the roles a
login maps from the provider's ``groups`` claim (a list, a string, absent)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest

from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app

from . import opdriver
from .gwkit import Gw
from .opdriver import CLIENT_ID, PUBLIC_CLIENT_ID, OpenIdProvider, sign_in_at_op

pytestmark = pytest.mark.integration

UserAgent = Callable[..., aiohttp.ClientSession]
StartOp = Callable[..., Awaitable[OpenIdProvider]]
ROLES = {"claim": "groups", "map": {"gateway-admins": ["admin"], "staff": ["staff"], "other": ["auditor"]},
         "default": ["user"]}
ROUTES = [{"path": "/api/admin", "upstream": "accounts", "roles": ["admin"]},
          {"path": "/api/staff", "upstream": "accounts", "roles": ["staff", "auditor", "user"]}]


MakeGw = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def make_gw(make_config: Callable[..., GatewayConfig], aiohttp_server: Any) -> AsyncIterator[MakeGw]:
    """make_gw(op, **provider) -> a gateway whose provider ``corp`` is ``op`` (client tokengate-test unless
    ``provider`` says otherwise), its callback registered at the OP."""
    async def make(op: OpenIdProvider, **provider: Any) -> Gw:
        corp = {"issuer": op.issuer, "client_id": CLIENT_ID, "client_secret": op.client_secret,
                "scopes": ["openid", "email", "profile", "groups"], "roles": ROLES, **provider}
        cfg = make_config(auth={"providers": {"corp": corp}, "refresh_cookie": {"secure": True}}, routes=ROUTES)
        gw = Gw(await aiohttp_server(build_app(cfg)), cfg)
        await op.allow_redirect_uris([gw.callback()], [f"{gw.url}/auth/login"])
        return gw

    yield make


async def start(ua: aiohttp.ClientSession, gw: Gw) -> str:
    """The provider's authorization URL a start redirects to."""
    started = await ua.get(f"{gw.url}/auth/oauth/corp/start", params={"rd": "/home"}, allow_redirects=False)
    assert started.status == 302, await started.text()
    return started.headers["Location"]


async def sign_in(ua: aiohttp.ClientSession, gw: Gw, account: str) -> aiohttp.ClientResponse:
    back = await sign_in_at_op(ua, await start(ua, gw), account)
    return await ua.get(str(back), allow_redirects=False)


async def id_token_kid(ua: aiohttp.ClientSession, gw: Gw) -> str:
    """The kid of the ID token the session of ``ua`` was signed in with (RP-initiated logout hands it back
    as id_token_hint)."""
    refreshed = await ua.post(f"{gw.url}/auth/refresh")
    assert refreshed.status == 200
    access = (await refreshed.json())["access_token"]
    out = await ua.post(f"{gw.url}/auth/logout", headers={"Authorization": f"Bearer {access}", "Accept": "text/html"},
                        allow_redirects=False)
    assert out.status == 302
    hint = parse_qs(urlsplit(out.headers["Location"]).query)["id_token_hint"][0]
    return str(jwt.get_unverified_header(hint)["kid"])


# -- key rotation at the provider -------------------------------------------------------------------------------

@pytest.mark.parametrize("retire", [False, True], ids=["old_key_kept", "old_key_retired"])
async def test_a_login_after_the_provider_rotated_its_keys_still_works(
        make_gw: MakeGw, oidc_op: OpenIdProvider, make_user_agent: UserAgent, retire: bool) -> None:
    gw = await make_gw(oidc_op)
    before = make_user_agent(gw.url)
    assert (await sign_in(before, gw, "alice")).status == 302   # the gateway now holds the OP's JWKS
    kid = await oidc_op.rotate_keys(retire=retire)
    after = make_user_agent(gw.url)
    done = await sign_in(after, gw, "alice")
    assert done.status == 302, gw.reasons()
    assert gw.counted("success") == 2 and await id_token_kid(after, gw) == kid


# -- the provider down and back ---------------------------------------------------------------------------------

async def test_a_callback_while_the_provider_is_down_gets_a_503_page_and_logins_work_once_it_is_back(
        make_gw: MakeGw, start_oidc_op: StartOp, make_user_agent: UserAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    # The public client (PKCE only) has no secret, so the OP started again on the same port is the same
    # provider to the gateway, with a new signing key (a new process) and no sessions.
    op = await start_oidc_op()
    gw = await make_gw(op, client_id=PUBLIC_CLIENT_ID, client_auth="none", client_secret=None)
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw, "alice")).status == 302   # metadata and keys fetched
    back = await sign_in_at_op(make_user_agent(gw.url), await start(ua, gw), "alice")

    assert await asyncio.to_thread(op.stop) is not None
    down = await ua.get(str(back), allow_redirects=False)
    assert down.status == 503 and down.content_type == "text/html", gw.reasons()
    assert "Location" not in down.headers and gw.cfg.auth.refresh_cookie.name not in down.cookies
    assert gw.counted("provider_unreachable") == 1
    authorization_url = await start(ua, gw)   # a start still works: from the cached metadata

    monkeypatch.setattr(opdriver, "free_port", lambda: op.port)
    again = await start_oidc_op(redirect_uris=[gw.callback()])
    assert again.issuer == op.issuer
    back = await sign_in_at_op(make_user_agent(gw.url), authorization_url, "carol")
    done = await ua.get(str(back), allow_redirects=False)
    assert done.status == 302, gw.reasons()
    assert gw.counted("success") == 2


# -- roles from the provider's groups claim ---------------------------------------------------------------------

@pytest.mark.parametrize(("account", "roles"), [("alice", ("admin",)), ("carol", ("staff", "auditor")),
                                                ("dave", ("staff",)), ("bob", ("user",))],
                         ids=["list_one", "list_two", "string", "absent"])
async def test_roles_are_mapped_from_the_groups_claim(make_gw: MakeGw, oidc_op: OpenIdProvider,
                                                      make_user_agent: UserAgent, account: str,
                                                      roles: tuple[str, ...]) -> None:
    gw = await make_gw(oidc_op)
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw, account)).status == 302
    record = await gw.server.app[GATEWAY].users.get(f"corp:{account}")
    assert record is not None and record.roles == roles
    refreshed = await ua.post(f"{gw.url}/auth/refresh")
    claims = jwt.decode((await refreshed.json())["access_token"], options={"verify_signature": False})
    assert tuple(claims["roles"]) == roles
