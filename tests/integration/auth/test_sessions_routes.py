"""GET/DELETE {prefix}/sessions over real sockets, on the embedded store and on a real Redis: what a
session lists, the current flag, ending one (its refresh and access tokens die, cached ones too), and
the one 404 for another user's session and an unknown id.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.auth.sessions import MAX_USER_AGENT_CHARS
from tests.conftest import bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import Auth, MakeAuth, claims_of

pytestmark = pytest.mark.integration

backend, store_url, make_auth, auth = shared.backend, shared.store_url, shared.make_auth, shared.auth
VERIFY = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/orders"}


async def sessions_of(auth: Auth, access_token: str) -> list[dict[str, Any]]:
    resp = await auth.client.get(f"{auth.cfg.auth.prefix}/sessions", headers=bearer(access_token))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return (await resp.json())["sessions"]


async def end(auth: Auth, access_token: str, sid: str) -> Any:
    return await auth.client.delete(f"{auth.cfg.auth.prefix}/sessions/{sid}", headers=bearer(access_token))


def sid_of(pair: dict[str, Any]) -> str:
    return claims_of(pair["access_token"])["sid"]


async def test_each_login_lists_as_a_session_with_its_user_agent_client_and_method(auth: Auth) -> None:
    before = int(time.time())
    first = await (await auth.login(headers={"User-Agent": "Firefox/140 \t\u202ecod.exe"})).json()
    second = await auth.session()
    listed = await sessions_of(auth, second["access_token"])
    assert [s["id"] for s in listed] == [sid_of(first), sid_of(second)]
    assert [s["current"] for s in listed] == [False, True]
    one = listed[0]
    assert set(one) == {"id", "created", "last_used", "user_agent", "client", "current", "method"}
    assert one["user_agent"] == "Firefox/140 cod.exe"   # no tab, no right-to-left override
    assert one["client"] == "127.0.0.1" and one["method"] == "password"
    assert before <= one["created"] <= one["last_used"] <= time.time()


async def test_a_long_user_agent_is_trimmed(auth: Auth) -> None:
    pair = await (await auth.login(headers={"User-Agent": "x" * 5000})).json()
    assert [s["user_agent"] for s in await sessions_of(auth, pair["access_token"])] == ["x" * MAX_USER_AGENT_CHARS]


async def test_a_refresh_keeps_the_session_and_moves_last_used(auth: Auth) -> None:
    pair = await auth.session()
    created = (await sessions_of(auth, pair["access_token"]))[0]["created"]
    # Whole seconds: poll until a refresh lands in a later second than the login.
    deadline = time.monotonic() + 5
    while True:
        pair = await (await auth.refresh(pair["refresh_token"])).json()
        [session] = await sessions_of(auth, pair["access_token"])
        if session["last_used"] > created or time.monotonic() > deadline:
            break
    assert session["created"] == created and session["last_used"] > created and session["current"]


async def test_users_see_only_their_own_sessions(auth: Auth) -> None:
    alice, bob = await auth.session("alice"), await auth.session("bob")
    assert [s["id"] for s in await sessions_of(auth, bob["access_token"])] == [sid_of(bob)]
    assert [s["id"] for s in await sessions_of(auth, alice["access_token"])] == [sid_of(alice)]


async def test_ending_a_session_kills_its_refresh_and_access_tokens_everywhere(auth: Auth) -> None:
    doomed, mine = await auth.session(), await auth.session()
    # Seen once, so the verified-token cache holds it: ending the session must reach the cache too.
    assert (await auth.client.get("/api/orders", headers=bearer(doomed["access_token"]))).status == 200
    resp = await end(auth, mine["access_token"], sid_of(doomed))
    assert resp.status == 204
    assert [s["id"] for s in await sessions_of(auth, mine["access_token"])] == [sid_of(mine)]
    refreshed = await auth.refresh(doomed["refresh_token"])
    assert (refreshed.status, (await refreshed.json())["code"]) == (401, "session_ended")
    for resp in (await auth.client.get("/api/orders", headers=bearer(doomed["access_token"])),
                 await auth.client.get(f"{auth.cfg.auth.prefix}/verify", headers={**bearer(doomed["access_token"]),
                                                                                  **VERIFY})):
        assert (resp.status, (await resp.json())["code"]) == (401, "token_revoked")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await auth.client.get("/api/orders", headers=bearer(mine["access_token"]))).status == 200
    assert (await auth.refresh(mine["refresh_token"])).status == 200


async def test_ending_ones_own_session_refuses_its_token_from_then_on(auth: Auth) -> None:
    pair = await auth.session()
    assert (await end(auth, pair["access_token"], sid_of(pair))).status == 204
    resp = await auth.client.get(f"{auth.cfg.auth.prefix}/sessions", headers=bearer(pair["access_token"]))
    assert (resp.status, (await resp.json())["code"]) == (401, "token_revoked")


async def test_another_users_session_and_an_unknown_id_get_the_same_404(auth: Auth) -> None:
    alice, bob = await auth.session("alice"), await auth.session("bob")
    for sid in (sid_of(bob), "no-such-session", "x" * 129, "a.b"):
        resp = await end(auth, alice["access_token"], sid)
        assert (resp.status, (await resp.json())["code"]) == (404, "session_not_found"), sid
    assert (await auth.refresh(bob["refresh_token"])).status == 200   # bob's session lives on
    assert (await end(auth, alice["access_token"], sid_of(alice))).status == 204
    again = await end(auth, (await auth.session())["access_token"], sid_of(alice))   # ended: unknown now
    assert (again.status, (await again.json())["code"]) == (404, "session_not_found")


async def test_sessions_need_an_access_token(auth: Auth) -> None:
    listing = await auth.client.get(f"{auth.cfg.auth.prefix}/sessions")
    assert (listing.status, (await listing.json())["code"]) == (401, "missing_token")
    ending = await auth.client.delete(f"{auth.cfg.auth.prefix}/sessions/abc")
    assert (ending.status, (await ending.json())["code"]) == (401, "missing_token")


async def test_in_browser_mode_ending_a_session_needs_the_csrf_header(make_auth: MakeAuth) -> None:
    auth = await make_auth(access_cookie=True)
    login = await auth.login()
    cookies = {name: morsel.value for name, morsel in login.cookies.items()}
    pair = await login.json()
    jar = "; ".join(f"{name}={value}" for name, value in cookies.items())
    path = f"{auth.cfg.auth.prefix}/sessions/{sid_of(pair)}"
    refused = await auth.client.delete(path, headers={"Cookie": jar})
    assert (refused.status, (await refused.json())["code"]) == (403, "csrf_failed")
    listed = await auth.client.get(f"{auth.cfg.auth.prefix}/sessions", headers={"Cookie": jar})
    assert listed.status == 200 and [s["current"] for s in (await listed.json())["sessions"]] == [True]
    ended = await auth.client.delete(path, headers={"Cookie": jar, "X-CSRF-Token": cookies["csrf_token"]})
    assert ended.status == 204
    assert any(m.value == "" or m["max-age"] == "0" for m in ended.cookies.values())   # cookies cleared
