"""POST /auth/refresh over real sockets, on the embedded store and on a real Redis: rotation, reuse
detection, concurrent refreshes, the grace window and accounts that went away."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter

import pytest

from gateway.auth.revocation import apply_revocation, build_revocation
from gateway.auth.sessions import SESSION_CLAIM, hash_refresh_token
from tests.conftest import bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import Auth, MakeAuth, claims_of, cookie_header, error_code, set_cookies

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
auth, backend, make_auth, store_url = shared.auth, shared.backend, shared.make_auth, shared.store_url

CONCURRENT = 20
GRACE_CLOSES_WITHIN_S = 10.0   # bound on polling for a 100 ms grace window to close


async def test_refresh_rotates_the_pair(auth: Auth) -> None:
    first = await auth.session()
    resp = await auth.refresh(first["refresh_token"])
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    second = await resp.json()
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert set_cookies(resp)["refresh_token"].value == second["refresh_token"]
    old, new = claims_of(first["access_token"]), claims_of(second["access_token"])
    assert new["sub"] == "alice" and new["roles"] == ["user"] and new[SESSION_CLAIM] == old[SESSION_CLAIM]
    assert (await auth.client.get("/api/orders", headers=bearer(second["access_token"]))).status == 200


async def test_refresh_takes_the_cookie(auth: Auth) -> None:
    first = await auth.session()
    resp = await auth.post("refresh", headers=cookie_header(refresh_token=first["refresh_token"]))
    assert resp.status == 200


async def test_the_body_wins_over_the_cookie(auth: Auth) -> None:
    alice, bob = await auth.session("alice"), await auth.session("bob")
    resp = await auth.refresh(bob["refresh_token"], headers=cookie_header(refresh_token=alice["refresh_token"]))
    assert resp.status == 200 and claims_of((await resp.json())["access_token"])["sub"] == "bob"
    assert (await auth.refresh(alice["refresh_token"])).status == 200   # the cookie's token was not used


async def test_a_rotated_token_presented_again_kills_the_whole_family(auth: Auth) -> None:
    first = await auth.session()
    second = await (await auth.refresh(first["refresh_token"])).json()
    third = await (await auth.refresh(second["refresh_token"])).json()
    reused = await auth.refresh(first["refresh_token"])
    assert reused.status == 401 and await error_code(reused) == "refresh_token_reused"
    assert (await reused.json())["error"] == "invalid_grant"
    newest = await auth.refresh(third["refresh_token"])   # the family's newest token died too
    assert newest.status == 401
    assert await auth.gw.store.find_refresh(hash_refresh_token(third["refresh_token"])) is None


async def test_reuse_leaves_other_sessions_alone(auth: Auth) -> None:
    victim, other = await auth.session(), await auth.session()
    await auth.refresh(victim["refresh_token"])
    assert (await auth.refresh(victim["refresh_token"])).status == 401
    assert (await auth.refresh(other["refresh_token"])).status == 200


async def test_concurrent_refreshes_with_one_token_give_exactly_one_success(auth: Auth) -> None:
    token = (await auth.session())["refresh_token"]
    answers = await asyncio.gather(*(auth.refresh(token) for _ in range(CONCURRENT)))
    statuses = Counter(resp.status for resp in answers)
    assert statuses == {200: 1, 401: CONCURRENT - 1}


@pytest.mark.parametrize("body, status, code", [
    (b"[]", 400, "bad_request"), (b"{", 400, "bad_request"), (b'{"refresh_token": 5}', 400, "bad_request"),
    (b'{"refresh_token": ["x"]}', 400, "bad_request"),
    (b'{"refresh_token": "no-such-token"}', 401, "invalid_refresh_token"),
    # No refresh token at all (and no cookie): a missing credential, as a logged-out browser sends.
    (b"", 401, "missing_refresh_token"), (b"{}", 401, "missing_refresh_token"),
    (b'{"refresh_token": null}', 401, "missing_refresh_token")])
async def test_bad_refresh_requests(auth: Auth, body: bytes, status: int, code: str) -> None:
    resp = await auth.post("refresh", data=body, headers={"Content-Type": "application/json"})
    assert (resp.status, await error_code(resp)) == (status, code)
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refresh_tokens_are_never_read_from_the_query_string(auth: Auth) -> None:
    token = (await auth.session())["refresh_token"]
    resp = await auth.client.post("/auth/refresh", params={"refresh_token": token})
    assert (resp.status, await error_code(resp)) == (401, "missing_refresh_token")


async def test_refresh_follows_role_changes(auth: Auth) -> None:
    first = await auth.session("alice")
    record = await auth.gw.users.get("alice")
    await auth.gw.store.put_user(dataclasses.replace(record, roles=("user", "admin")))
    second = await (await auth.refresh(first["refresh_token"])).json()
    assert claims_of(second["access_token"])["roles"] == ["user", "admin"]


@pytest.mark.parametrize("change", ["disable", "delete"])
async def test_refresh_of_a_disabled_or_deleted_account_is_refused_and_ends_the_session(
        auth: Auth, change: str) -> None:
    first = await auth.session("alice")
    if change == "disable":
        await auth.gw.users.set_disabled("alice", True)
    else:
        await auth.gw.users.delete("alice")
    resp = await auth.refresh(first["refresh_token"])
    assert resp.status == 401 and await error_code(resp) == "invalid_refresh_token"
    await auth.gw.users.add("alice", "another password 123", roles=["user"])
    if change == "disable":
        await auth.gw.users.set_disabled("alice", False)
    again = await auth.refresh(first["refresh_token"])   # the family stays dead, ended on purpose
    assert again.status == 401 and await error_code(again) == "session_ended"


def reuse_alarms(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tokengate.sessions" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("ending", ["logout", "logout-all", "revoke-sub"])
async def test_a_refresh_after_the_session_was_ended_on_purpose_is_a_plain_invalid_grant(
        auth: Auth, caplog: pytest.LogCaptureFixture, ending: str) -> None:
    first = await auth.session()
    second = await (await auth.refresh(first["refresh_token"])).json()
    if ending == "revoke-sub":   # `tokengate revoke --sub`, users disable/delete/set-password, a password reset
        await apply_revocation(auth.gw.store, await build_revocation(auth.gw.config, sub="alice", now=time.time()),
                               auth.gw.denylist.revoke)
    else:
        assert (await auth.post(ending, headers=bearer(second["access_token"]))).status == 204
    with caplog.at_level(logging.INFO, logger="tokengate.sessions"):
        for token in (second["refresh_token"], first["refresh_token"]):   # its newest, and one rotated away
            resp = await auth.refresh(token)
            assert resp.status == 401 and (await resp.json())["error"] == "invalid_grant"
            assert await error_code(resp) == "session_ended"
    assert reuse_alarms(caplog) == []
    assert any(r.getMessage() == "refresh token of an ended session presented" for r in caplog.records)


async def test_real_reuse_still_raises_the_alarm(auth: Auth, caplog: pytest.LogCaptureFixture) -> None:
    first = await auth.session()
    await auth.refresh(first["refresh_token"])
    with caplog.at_level(logging.INFO, logger="tokengate.sessions"):
        reused = await auth.refresh(first["refresh_token"])
    assert await error_code(reused) == "refresh_token_reused"
    assert [r.getMessage() for r in reuse_alarms(caplog)] == ["refresh token reused; session revoked"]


# --- grace window ---------------------------------------------------------------------------------

async def test_within_the_grace_window_the_same_token_gets_the_very_same_pair(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_grace="30s")
    token = (await auth.session())["refresh_token"]
    first = await (await auth.refresh(token)).json()
    again = await auth.refresh(token)
    assert again.status == 200
    replay = await again.json()
    assert replay["access_token"] == first["access_token"] and replay["refresh_token"] == first["refresh_token"]
    assert set_cookies(again)["refresh_token"].value == first["refresh_token"]
    # One branch only: the replayed refresh token is the family's head, and it rotates once.
    assert (await auth.refresh(first["refresh_token"])).status == 200


async def test_concurrent_refreshes_within_grace_all_get_one_pair(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_grace="30s")
    token = (await auth.session())["refresh_token"]
    answers = await asyncio.gather(*(auth.refresh(token) for _ in range(CONCURRENT)))
    assert {resp.status for resp in answers} == {200}
    pairs = {((body := await resp.json())["access_token"], body["refresh_token"]) for resp in answers}
    assert len(pairs) == 1
    (_, head), = pairs
    assert await auth.gw.store.find_refresh(hash_refresh_token(head)) is not None


async def test_after_the_grace_window_the_old_token_is_reuse(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_grace="100ms")
    token = (await auth.session())["refresh_token"]
    first = await (await auth.refresh(token)).json()
    deadline = time.monotonic() + GRACE_CLOSES_WITHIN_S
    # Presented again until the window closes: within it, the very same pair (and nothing else changes).
    while (late := await auth.refresh(token)).status == 200:
        assert (await late.json())["refresh_token"] == first["refresh_token"]
        assert time.monotonic() < deadline, f"a 100 ms grace window still open after {GRACE_CLOSES_WITHIN_S}s"
        await asyncio.sleep(0.02)
    assert late.status == 401 and await error_code(late) == "refresh_token_reused"
    assert (await auth.refresh(first["refresh_token"])).status == 401


async def test_grace_replay_needs_the_old_token_itself(make_auth: MakeAuth) -> None:
    auth = await make_auth(refresh_grace="30s")
    token = (await auth.session())["refresh_token"]
    await auth.refresh(token)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    resp = await auth.refresh(forged)
    assert resp.status == 401
