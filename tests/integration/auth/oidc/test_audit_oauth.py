"""The delegated login's audit lines against the real OpenID Provider: one ``oauth_login`` line a
callback, ``success`` with the session or the reason it failed, and no log line of the run carrying the
ID token, an access or refresh token or a cookie value. (The password flows: ../test_audit.py.)"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest

from gateway.auth.oauth.pending import COOKIE_PREFIX
from gateway.logs import AUDIT_LOGGER, LOGOUT, OAUTH_LOGIN, REFRESH, SUCCESS, JsonFormatter

from .opdriver import sign_in_at_op
from .test_delegated_login import MakeGw, make_gw, start

__all__ = ["make_gw"]   # the fixture, by name

pytestmark = pytest.mark.integration


async def test_a_delegated_login_and_a_replayed_callback_each_write_one_oauth_login_line(
        make_gw: MakeGw, make_user_agent: Callable[..., aiohttp.ClientSession],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)   # every logger, every level
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await start(ua, gw)
    back = await sign_in_at_op(ua, started.headers["Location"], "alice")
    sealed = {c.key: c.value for c in ua.cookie_jar if c.key.startswith(COOKIE_PREFIX)}
    done = await ua.get(str(back), allow_redirects=False)
    assert done.status == 302
    replay = make_user_agent(gw.url)   # the same answer again, pending-login cookie and all: state_used
    replay.cookie_jar.update_cookies(sealed, response_url=aiohttp.client.URL(gw.callback()))
    assert (await replay.get(str(back), allow_redirects=False)).status == 400

    refreshed = await ua.post(f"{gw.url}/auth/refresh")
    assert refreshed.status == 200
    access = (await refreshed.json())["access_token"]
    sid = jwt.decode(access, options={"verify_signature": False})["sid"]
    logout = await ua.post(f"{gw.url}/auth/logout", headers={"Authorization": f"Bearer {access}",
                                                             "Accept": "text/html"}, allow_redirects=False)
    assert logout.status == 302
    id_token = parse_qs(urlsplit(logout.headers["Location"]).query)["id_token_hint"][0]

    lines = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    got = [(r.event, r.subject, r.session, r.outcome, getattr(r, "provider", None)) for r in lines]
    assert got == [(OAUTH_LOGIN, "corp:alice", sid, SUCCESS, "corp"), (OAUTH_LOGIN, None, None, "state_used", "corp"),
                   (REFRESH, "corp:alice", sid, SUCCESS, None), (LOGOUT, "corp:alice", sid, SUCCESS, None)]
    assert all(r.client == "127.0.0.1" and r.request_id for r in lines)

    cookies = [m.value for resp in (done, refreshed) for m in resp.cookies.values() if len(m.value) >= 16]
    assert cookies   # the session's refresh cookie, at least
    secrets = {id_token, access, (await refreshed.json()).get("refresh_token") or "", *sealed.values(), *cookies} - {""}
    everything = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert sorted(secret for secret in secrets if secret in everything) == []
