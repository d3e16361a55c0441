"""Signup, forgot/reset password and change-password over real sockets, on the embedded store and on a
real Redis, with a real SMTP server: the reset link is read from the mail that arrived."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from gateway.auth.account_routes import ACCOUNTS
from gateway.auth.accounts.remote import CredentialsUsers
from gateway.auth.accounts.resets import CHANGED_SUBJECT, RESET_SUBJECT, hash_reset_token
from tests.conftest import bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import GENEROUS, PASSWORD, Auth, MakeAuth, claims_of, error_code, until
from tests.integration.smtpserver import SmtpServer, smtp_server, text_of, token_in

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
auth, backend, make_auth, store_url = shared.auth, shared.backend, shared.make_auth, shared.store_url
__all__ = ["smtp_server"]

RATES = {**GENEROUS, "signup": "10000/min", "forgot_password": "10000/min"}
SENDER = "Tokengate <no-reply@example.test>"
RESET_URL = "https://app.example.test/reset?lang=en&token={token}"
NEW_PASSWORD = "a new and longer passphrase"
MakeAccounts = Callable[..., Awaitable[Auth]]


@pytest.fixture
def make_accounts(smtp_server: SmtpServer, make_auth: MakeAuth) -> MakeAccounts:
    """make_accounts(**auth section) -> Auth whose mail goes to smtp_server; limits generous unless given.

    smtp_server comes first so that it stops last: the app drains its outgoing mail (a "password
    changed" notice may still be on its way) into a live server, not one torn down mid-conversation.
    """

    async def make(*, listen: dict[str, Any] | None = None, **section: Any) -> Auth:
        section["rate_limits"] = {**RATES, **section.get("rate_limits", {})}
        section["mail"] = {"smtp_url": smtp_server.url(), "from": SENDER, "reset_url": RESET_URL, "timeout": "2s",
                           **section.get("mail", {})}
        made = await make_auth(listen=listen, **section)
        made.gw.mailer.backoff_s = 0.01
        return made

    return make


@pytest.fixture
async def accounts(make_accounts: MakeAccounts) -> Auth:
    return await make_accounts()


async def signup(auth: Auth, **body: Any) -> aiohttp.ClientResponse:
    return await auth.post("signup", json={"username": "dave", "password": NEW_PASSWORD, **body})


async def forgot(auth: Auth, email: str, **kw: Any) -> aiohttp.ClientResponse:
    return await auth.post("forgot-password", json={"email": email}, **kw)


async def reset(auth: Auth, token: str, new_password: str = NEW_PASSWORD) -> aiohttp.ClientResponse:
    return await auth.post("reset-password", json={"token": token, "new_password": new_password})


async def change(auth: Auth, access_token: str, current: str = PASSWORD,
                 new: str = NEW_PASSWORD) -> aiohttp.ClientResponse:
    return await auth.post("change-password", headers=bearer(access_token),
                           json={"current_password": current, "new_password": new})


async def settled(auth: Auth) -> None:
    """Every forgot-password request has done its work and the mailer has nothing left to send."""
    await until(lambda: not auth.client.app[ACCOUNTS].background and auth.gw.mailer.pending == 0)


async def reset_mail(auth: Auth, smtp: SmtpServer, email: str = "alice@example.test") -> EmailMessage:
    """Ask for a reset of ``email``; the reset mail that arrives for it (other mails may come too)."""
    before = len(smtp.messages)
    assert (await forgot(auth, email)).status == 202
    return await mail_with_subject(smtp, RESET_SUBJECT, after=before)


async def mail_with_subject(smtp: SmtpServer, subject: str, after: int) -> EmailMessage:
    """The first mail with ``subject`` among those that arrived after the first ``after`` ones."""
    count = after + 1
    while True:
        found = [m for m in (await smtp.wait_for(count))[after:] if m["Subject"] == subject]
        if found:
            return found[0]
        count += 1


async def proxied_status(auth: Auth, access_token: str) -> tuple[int, str | None]:
    resp = await auth.client.get("/api/orders", headers=bearer(access_token))
    return resp.status, (await resp.json()).get("code") if resp.status != 200 else None


# --- signup ---------------------------------------------------------------------------------------

async def test_signup_creates_an_account_with_the_default_roles(accounts: Auth) -> None:
    resp = await signup(accounts, email="dave@example.test")
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {"username": "dave", "roles": ["user"]}
    record = await accounts.gw.users.get("dave")
    assert record is not None and record.email == "dave@example.test" and record.password_hash.startswith("$argon2id$")
    login = await accounts.login("dave", NEW_PASSWORD)
    assert login.status == 200
    claims = claims_of((await login.json())["access_token"])
    assert claims["sub"] == "dave" and claims["roles"] == ["user"] and claims["email"] == "dave@example.test"


async def test_signup_gives_the_configured_default_roles(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(default_roles=["member", "beta"])
    resp = await signup(auth)
    assert resp.status == 201 and (await resp.json())["roles"] == ["member", "beta"]


async def test_signup_for_a_taken_username_gets_409(accounts: Auth) -> None:
    resp = await signup(accounts, username="alice")
    assert resp.status == 409 and await error_code(resp) == "username_taken"
    assert (await accounts.login("alice", PASSWORD)).status == 200   # the account is untouched


@pytest.mark.parametrize("password", ["short1!", "x" * 129, "PASSWORD1", "iloveyou", "Dave.Smith",
                                      "dave.smith@example.test", "DAVE.SMITH@EXAMPLE.TEST"])
async def test_signup_with_a_weak_password_gets_400_with_the_reason(accounts: Auth, password: str) -> None:
    resp = await signup(accounts, username="dave.smith", email="dave.smith@example.test", password=password)
    assert resp.status == 400 and await error_code(resp) == "weak_password"
    assert password not in (await resp.json())["error_description"]
    assert await accounts.gw.users.get("dave.smith") is None


@pytest.mark.parametrize("body", [{"username": "has space"}, {"username": "x" * 65}, {"email": "not-an-address"},
                                  {"email": 42}])
async def test_signup_with_a_bad_username_or_email_gets_400(accounts: Auth, body: dict[str, Any]) -> None:
    resp = await signup(accounts, **body)
    assert resp.status == 400 and await error_code(resp) == "invalid_account"


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
async def test_signup_refuses_what_a_cross_site_form_could_post(accounts: Auth, content_type: str) -> None:
    # A urlencoded post is the signup page's form, which needs the page's CSRF token (test_account_pages.py).
    resp = await accounts.post("signup", data="username=dave&password=x", headers={"Content-Type": content_type})
    assert resp.status == 400 and await error_code(resp) == "json_required"


async def test_disabled_signup_answers_like_a_path_nothing_serves(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(signup=False)
    resp, unknown = await signup(auth), await auth.post("no-such-endpoint", json={})
    assert resp.status == unknown.status == 404
    assert await resp.json() == await unknown.json() and await error_code(resp) == "no_route"
    assert (await auth.client.get("/auth/signup")).status == 404
    assert await auth.gw.users.get("dave") is None


async def test_signup_over_the_limit_gets_429(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(rate_limits={"signup": "2/min"})
    statuses = [(await signup(auth, username=f"user{i}")).status for i in range(3)]
    assert statuses == [201, 201, 429]
    resp = await signup(auth, username="user9")
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_other_methods_on_account_endpoints_get_405(accounts: Auth) -> None:
    for endpoint in ("signup", "forgot-password", "reset-password", "change-password"):
        resp = await accounts.client.put(f"/auth/{endpoint}")
        allow = "GET, POST" if endpoint in ("signup", "forgot-password") else "POST"   # GET: their HTML pages
        assert resp.status == 405 and resp.headers["Allow"] == allow


async def test_accounts_kept_by_a_credentials_service_cannot_be_edited_here(accounts: Auth) -> None:
    accounts.gw.users = CredentialsUsers(f"http://127.0.0.1:{unused_port()}/check")
    pair = {"access_token": accounts.gw.minter.mint_access_token("alice", ("user",))}
    for resp in (await signup(accounts), await forgot(accounts, "alice@example.test"),
                 await reset(accounts, "some-token"), await change(accounts, pair["access_token"])):
        assert resp.status == 404 and await error_code(resp) == "accounts_not_editable"


# --- forgot-password ------------------------------------------------------------------------------

async def test_forgot_password_answers_the_same_for_unknown_disabled_and_real_addresses(
        accounts: Auth, smtp_server: SmtpServer) -> None:
    await accounts.gw.users.add("dora", PASSWORD, email="dora@example.test")
    await accounts.gw.users.set_disabled("dora", True)
    answers = []
    for email in ("nobody@example.test", "dora@example.test", "alice@example.test"):   # the real one last
        resp = await forgot(accounts, email)
        answers.append((resp.status, await resp.json(), resp.headers["Content-Type"], resp.headers["Cache-Control"]))
    assert answers == [(202, {"status": "accepted"}, "application/json; charset=utf-8", "no-store")] * 3
    await smtp_server.wait_for(1)
    await settled(accounts)
    assert [m["To"] for m in smtp_server.messages] == ["alice@example.test"]


async def test_forgot_password_answers_before_any_lookup_or_token_work(accounts: Auth, smtp_server: SmtpServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    put_reset = accounts.gw.store.put_reset

    async def held(*args: Any) -> None:
        await release.wait()
        await put_reset(*args)

    monkeypatch.setattr(accounts.gw.store, "put_reset", held)
    resp = await asyncio.wait_for(forgot(accounts, "alice@example.test"), 5)
    assert resp.status == 202 and smtp_server.messages == []
    release.set()
    await smtp_server.wait_for(1)


async def test_the_reset_mail_carries_a_link_to_a_token_the_store_keeps_only_hashed(
        accounts: Auth, smtp_server: SmtpServer) -> None:
    message = await reset_mail(accounts, smtp_server, "ALICE@Example.TEST")   # any case finds the account
    assert message["To"] == "alice@example.test" and message["From"] == SENDER   # the address on file
    assert message["Subject"] == "Reset your password"
    assert "https://app.example.test/reset?lang=en&token=" in text_of(message) and "alice" in text_of(message)
    token = token_in(message)
    assert len(token) >= 43
    assert await accounts.gw.store.find_reset(hash_reset_token(token), time.time()) == "alice"
    assert await accounts.gw.store.find_reset(token, time.time()) is None


async def test_each_account_of_a_shared_address_gets_its_own_link(accounts: Auth, smtp_server: SmtpServer) -> None:
    await accounts.gw.users.add("alice2", PASSWORD, email="Alice@Example.test")
    assert (await forgot(accounts, "alice@example.test")).status == 202
    messages = await smtp_server.wait_for(2)
    by_account = {("alice2" in text_of(m)): m for m in messages}
    assert by_account[True]["To"] == "Alice@Example.test"
    assert (await reset(accounts, token_in(by_account[True]))).status == 204
    assert (await accounts.login("alice2", NEW_PASSWORD)).status == 200
    assert (await accounts.login("alice", PASSWORD)).status == 200   # the other account keeps its password


async def test_forgot_password_is_limited_per_client_address(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(rate_limits={"forgot_password": "2/min"})
    statuses = [(await forgot(auth, f"user{i}@example.test")).status for i in range(3)]
    assert statuses == [202, 202, 429]


async def test_forgot_password_is_limited_per_email_address_across_clients(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(rate_limits={"forgot_password": "2/min"}, listen={"trusted_proxies": ["127.0.0.0/8"]})
    statuses = [(await forgot(auth, "Nobody@example.test", headers={"X-Forwarded-For": f"203.0.113.{i}"})).status
                for i in range(2)] + [(await forgot(auth, "nobody@EXAMPLE.test",
                                                   headers={"X-Forwarded-For": "203.0.113.9"})).status]
    assert statuses == [202, 202, 429]


@pytest.mark.parametrize("body", [{}, {"email": ""}, {"email": "no-at-sign"}, {"email": ["a@b.test"]}])
async def test_forgot_password_with_a_malformed_body_gets_400(accounts: Auth, body: dict[str, Any]) -> None:
    assert (await accounts.post("forgot-password", json=body)).status == 400


async def test_forgot_password_with_the_smtp_server_down_still_answers_202(
        make_accounts: MakeAccounts, caplog: pytest.LogCaptureFixture) -> None:
    auth = await make_accounts(mail={"smtp_url": f"smtp://127.0.0.1:{unused_port()}", "attempts": 2})
    resp = await forgot(auth, "alice@example.test")
    assert resp.status == 202 and await resp.json() == {"status": "accepted"}
    await until(lambda: auth.gw.mailer.failed == 1)
    attempts = [r.getMessage() for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert len(attempts) == 2 and "attempt 2 of 2" in attempts[1]
    assert (await forgot(auth, "alice@example.test")).status == 202


# --- reset-password -------------------------------------------------------------------------------

async def test_a_reset_token_sets_the_password_once(accounts: Auth, smtp_server: SmtpServer) -> None:
    token = token_in(await reset_mail(accounts, smtp_server))
    resp = await reset(accounts, token)
    assert resp.status == 204 and resp.headers["Cache-Control"] == "no-store"
    assert (await accounts.login("alice", NEW_PASSWORD)).status == 200
    assert (await accounts.login("alice", PASSWORD)).status == 401
    again = await reset(accounts, token, "yet another fine passphrase")
    assert again.status == 400 and await error_code(again) == "invalid_reset_token"
    assert (await accounts.login("alice", NEW_PASSWORD)).status == 200


async def test_the_account_holder_is_told_when_the_password_changes(accounts: Auth, smtp_server: SmtpServer) -> None:
    token = token_in(await reset_mail(accounts, smtp_server))
    before = len(smtp_server.messages)
    assert (await reset(accounts, token)).status == 204
    notice = await mail_with_subject(smtp_server, CHANGED_SUBJECT, after=before)
    assert notice["To"] == "alice@example.test"
    assert token not in notice.get_content()


async def test_an_expired_reset_token_is_refused(make_accounts: MakeAccounts, smtp_server: SmtpServer) -> None:
    auth = await make_accounts(reset_ttl="1s")
    token = token_in(await reset_mail(auth, smtp_server))

    async def expired() -> bool:
        return await auth.gw.store.find_reset(hash_reset_token(token), time.time()) is None

    await until(expired, limit_s=5)
    resp = await reset(auth, token)
    assert resp.status == 400 and await error_code(resp) == "invalid_reset_token"
    assert (await auth.login("alice", PASSWORD)).status == 200


async def test_a_newer_reset_kills_the_older_token(accounts: Auth, smtp_server: SmtpServer) -> None:
    older = token_in(await reset_mail(accounts, smtp_server))
    newer = token_in(await reset_mail(accounts, smtp_server))
    assert older != newer
    resp = await reset(accounts, older)
    assert resp.status == 400 and await error_code(resp) == "invalid_reset_token"
    assert (await reset(accounts, newer)).status == 204


@pytest.mark.parametrize("token", ["never-issued", "x" * 43])
async def test_an_unknown_reset_token_gets_the_same_400(accounts: Auth, token: str) -> None:
    resp = await reset(accounts, token)
    assert resp.status == 400 and await error_code(resp) == "invalid_reset_token"


async def test_a_reset_revokes_every_session_of_the_account(accounts: Auth, smtp_server: SmtpServer) -> None:
    before, other = [await accounts.session() for _ in range(2)], await accounts.session("bob")
    assert (await reset(accounts, token_in(await reset_mail(accounts, smtp_server)))).status == 204
    for pair in before:
        assert await proxied_status(accounts, pair["access_token"]) == (401, "token_revoked")
        assert (await accounts.refresh(pair["refresh_token"])).status == 401
    assert await proxied_status(accounts, other["access_token"]) == (200, None)
    after = await accounts.login("alice", NEW_PASSWORD)
    assert await proxied_status(accounts, (await after.json())["access_token"]) == (200, None)


async def test_a_weak_new_password_is_refused_without_spending_the_token(accounts: Auth,
                                                                         smtp_server: SmtpServer) -> None:
    token = token_in(await reset_mail(accounts, smtp_server))
    for weak in ("short", "password123", "alice", "alice@example.test"):
        resp = await reset(accounts, token, weak)
        assert resp.status == 400 and await error_code(resp) == "weak_password"
    assert (await accounts.login("alice", PASSWORD)).status == 200
    assert (await reset(accounts, token)).status == 204


async def test_a_reset_token_of_a_since_disabled_account_is_refused(accounts: Auth, smtp_server: SmtpServer) -> None:
    token = token_in(await reset_mail(accounts, smtp_server))
    await accounts.gw.users.set_disabled("alice", True)
    resp = await reset(accounts, token)
    assert resp.status == 400 and await error_code(resp) == "invalid_reset_token"


async def test_concurrent_uses_of_one_reset_token_succeed_once(accounts: Auth, smtp_server: SmtpServer) -> None:
    token = token_in(await reset_mail(accounts, smtp_server))
    statuses = [r.status for r in await asyncio.gather(*(reset(accounts, token) for _ in range(5)))]
    assert sorted(statuses) == [204, 400, 400, 400, 400]


@pytest.mark.parametrize("body", [{}, {"token": "t"}, {"new_password": NEW_PASSWORD},
                                  {"token": 1, "new_password": "x"}])
async def test_reset_password_with_a_malformed_body_gets_400(accounts: Auth, body: dict[str, Any]) -> None:
    assert (await accounts.post("reset-password", json=body)).status == 400


# --- change-password ------------------------------------------------------------------------------

async def test_change_password_ends_every_other_session_and_hands_out_a_working_pair(accounts: Auth) -> None:
    others, mine = [await accounts.session() for _ in range(2)], await accounts.session()
    bobs = await accounts.session("bob")
    resp = await change(accounts, mine["access_token"])
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    fresh = await resp.json()
    assert set(fresh) == {"access_token", "token_type", "expires_in", "refresh_token"}
    for pair in [*others, mine]:
        assert await proxied_status(accounts, pair["access_token"]) == (401, "token_revoked")
        assert (await accounts.refresh(pair["refresh_token"])).status == 401
    assert await proxied_status(accounts, fresh["access_token"]) == (200, None)
    refreshed = await accounts.refresh(fresh["refresh_token"])
    assert refreshed.status == 200
    assert await proxied_status(accounts, (await refreshed.json())["access_token"]) == (200, None)
    assert await proxied_status(accounts, bobs["access_token"]) == (200, None)
    assert (await accounts.login("alice", NEW_PASSWORD)).status == 200
    assert (await accounts.login("alice", PASSWORD)).status == 401


async def test_change_password_with_a_wrong_current_password_gets_401_then_429(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(rate_limits={"login": "2/min"})
    access = (await auth.session())["access_token"]
    first, second, third = [await change(auth, access, current="not my password") for _ in range(3)]
    assert (first.status, second.status, third.status) == (401, 401, 429)
    assert await error_code(first) == "invalid_credentials" and "Retry-After" in third.headers
    assert await proxied_status(auth, access) == (200, None)   # nothing was revoked


async def test_change_password_to_a_weak_one_gets_400_and_changes_nothing(accounts: Auth) -> None:
    access = (await accounts.session())["access_token"]
    resp = await change(accounts, access, new="12345678")
    assert resp.status == 400 and await error_code(resp) == "weak_password"
    assert await proxied_status(accounts, access) == (200, None)
    assert (await accounts.login("alice", PASSWORD)).status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.token"}])
async def test_change_password_needs_a_valid_access_token(accounts: Auth, headers: dict[str, str]) -> None:
    resp = await accounts.post("change-password", headers=headers,
                               json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert resp.status == 401


async def test_change_password_with_a_revoked_token_gets_401(accounts: Auth) -> None:
    access = (await accounts.session())["access_token"]
    assert (await accounts.post("logout", headers=bearer(access))).status == 204
    resp = await change(accounts, access)
    assert resp.status == 401 and await error_code(resp) == "token_revoked"


# --- what reaches the log -------------------------------------------------------------------------

async def test_no_token_link_or_password_reaches_the_log(accounts: Auth, smtp_server: SmtpServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await signup(accounts, email="dave@example.test")).status == 201
    message = await reset_mail(accounts, smtp_server, "dave@example.test")
    token, weak = token_in(message), "password1"
    assert (await reset(accounts, token, weak)).status == 400
    assert (await reset(accounts, token, "the dave reset passphrase")).status == 204
    access = (await (await accounts.login("dave", "the dave reset passphrase")).json())["access_token"]
    assert (await change(accounts, access, "the dave reset passphrase", "dave changed it again")).status == 200
    await settled(accounts)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records
                        if r.name != "mail.log")   # the test SMTP server's own log shows what it received
    for secret in (token, token[:20], NEW_PASSWORD, weak, "the dave reset passphrase", "dave changed it again",
                   access, "reset?lang=en&token"):
        assert secret not in logged
    assert "password reset" in logged   # the events themselves are logged, by subject


async def test_the_log_backend_logs_the_reset_mail_with_its_link_masked(make_accounts: MakeAccounts,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = await make_accounts(mail={"backend": "log"})
    assert (await forgot(auth, "alice@example.test")).status == 202
    await settled(auth)
    [mail_record] = [r for r in caplog.records if "log backend" in r.getMessage()]
    assert "Reset your password" in mail_record.getMessage() and "token=***" in mail_record.getMessage()
    assert auth.gw.mailer.delivered == 1
