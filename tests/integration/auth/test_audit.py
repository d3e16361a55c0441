"""The audit log (DESIGN "Sessions and sender-constrained tokens"): every password flow run through the
app on a real socket, on the embedded store and on a real Redis. Each flow writes exactly one
``tokengate.audit`` line with its fields, and no log line of the whole run, of any logger, carries a
token, a DPoP proof, a password, a cookie value, a CSRF token or a reset token. (The delegated login's lines are
checked in oidc/test_audit_oauth.py, next to the provider fixture.)
"""

from __future__ import annotations

import logging
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest

from gateway.admin.routes import build_admin_app
from gateway.logs import (ADMIN_REVOKE, AUDIT_LOGGER, LOGIN, LOGIN_FAILED, LOGOUT, LOGOUT_ALL, PASSWORD_CHANGE,
                          PASSWORD_RESET, REFRESH, REFRESH_REUSE, SESSION_END, SUCCESS, JsonFormatter)
from tests.conftest import bearer
from tests.integration.auth import test_account_routes as accounts_shared, test_auth_routes as shared
from tests.integration.auth.test_account_pages import open_page, post_form
from tests.integration.auth.test_account_routes import NEW_PASSWORD, change, reset, reset_mail
from tests.integration.auth.test_auth_routes import PASSWORD, Auth, claims_of
from tests.integration.auth.test_dpop_routes import proof_for
from tests.integration.smtpserver import SmtpServer, smtp_server, token_in

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
backend, make_auth, store_url = shared.backend, shared.make_auth, shared.store_url
accounts, make_accounts = accounts_shared.accounts, accounts_shared.make_accounts
__all__ = ["smtp_server"]

pytestmark = pytest.mark.integration

AUDIT_FIELDS = {"event", "subject", "session", "client", "request_id", "outcome"}
WRONG_PASSWORD = "not the password at all"
REQUEST_ID = "audit-test-request-1"


class Secrets:
    """Every secret the run handed out or sent, collected as it goes."""

    def __init__(self) -> None:
        self.values: set[str] = {PASSWORD, NEW_PASSWORD, WRONG_PASSWORD}

    def pair(self, body: dict[str, Any]) -> dict[str, Any]:
        self.values.update(v for k, v in body.items() if k in ("access_token", "refresh_token") and v)
        return body

    def cookies(self, resp: aiohttp.ClientResponse) -> None:
        jar: SimpleCookie = SimpleCookie()
        for header in resp.headers.getall("Set-Cookie", []):
            jar.load(header)
        self.values.update(morsel.value for morsel in jar.values() if len(morsel.value) >= 16)


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [{key: getattr(r, key) for key in vars(r) if key in AUDIT_FIELDS or key in EXTRA}
            for r in caplog.records if r.name == AUDIT_LOGGER]


EXTRA = {"provider", "new_session", "kind", "target"}   # the plain extras some events add


async def test_every_flow_writes_its_audit_line_once_and_no_log_carries_a_secret(
        make_accounts: Any, smtp_server: SmtpServer, aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)   # every logger, every level: a secret at debug is a leak too
    auth: Auth = await make_accounts(access_cookie=True)
    seen = Secrets()

    async def login(username: str = "alice", password: str = PASSWORD, **kw: Any) -> aiohttp.ClientResponse:
        resp = await auth.login(username, password, **kw)
        seen.cookies(resp)
        return resp

    first = seen.pair(await (await login(headers={"X-Request-Id": REQUEST_ID})).json())
    sid1 = claims_of(first["access_token"])["sid"]
    assert (await login("mallory", WRONG_PASSWORD)).status == 401

    page, csrf = await open_page(auth, "login")
    seen.values.add(csrf)
    signed_in = await post_form(auth, "login", csrf, username="bob", password=PASSWORD, rd="/")
    assert signed_in.status == 302, await signed_in.text()
    seen.cookies(signed_in)
    refused = await post_form(auth, "login", csrf, username="bob", password=WRONG_PASSWORD, rd="/")
    assert refused.status == 401

    refreshed = await auth.refresh(first["refresh_token"])
    seen.cookies(refreshed)
    seen.pair(await refreshed.json())
    reused = await auth.refresh(first["refresh_token"])   # rotated already: the family dies
    assert (await reused.json())["code"] == "refresh_token_reused"

    doomed, mine = seen.pair(await (await login()).json()), seen.pair(await (await login()).json())
    sid2, sid3 = claims_of(doomed["access_token"])["sid"], claims_of(mine["access_token"])["sid"]
    prefix = auth.cfg.auth.prefix
    assert (await auth.client.delete(f"{prefix}/sessions/{sid2}", headers=bearer(mine["access_token"]))).status == 204
    assert (await auth.post("logout", headers=bearer(mine["access_token"]))).status == 204

    fourth = seen.pair(await (await login()).json())
    sid4 = claims_of(fourth["access_token"])["sid"]
    changed = await change(auth, fourth["access_token"])
    assert changed.status == 200, await changed.text()
    seen.cookies(changed)
    fifth = seen.pair(await changed.json())
    sid5 = claims_of(fifth["access_token"])["sid"]
    assert (await auth.post("logout-all", headers=bearer(fifth["access_token"]))).status == 204

    reset_token = token_in(await reset_mail(auth, smtp_server))
    seen.values.add(reset_token)
    assert (await reset(auth, reset_token, "yet another fine passphrase")).status == 204
    seen.values.add("yet another fine passphrase")

    # DPoP: a bound login and refresh, the sessions list with a proof; a replayed proof is refused.
    login_proof = proof_for(auth, "POST", f"{prefix}/login")
    bound = seen.pair(await (await login("bob", headers={"DPoP": login_proof})).json())
    assert bound["token_type"] == "DPoP"
    sid6 = claims_of(bound["access_token"])["sid"]
    replayed = await login("bob", headers={"DPoP": login_proof})
    assert (replayed.status, (await replayed.json())["error"]) == (400, "invalid_dpop_proof")
    refresh_proof = proof_for(auth, "POST", f"{prefix}/refresh")
    rebound_answer = await auth.refresh(bound["refresh_token"], headers={"DPoP": refresh_proof})
    seen.cookies(rebound_answer)
    rebound = seen.pair(await rebound_answer.json())
    list_proof = proof_for(auth, "GET", f"{prefix}/sessions", token=rebound["access_token"])
    listed = await auth.client.get(f"{prefix}/sessions", headers={"Authorization": f"DPoP {rebound['access_token']}",
                                                                  "DPoP": list_proof})
    assert listed.status == 200, await listed.text()
    seen.values.update((login_proof, refresh_proof, list_proof))

    admin = await aiohttp_client(build_admin_app(auth.client.app))
    assert (await admin.post("/admin/revoke", json={"sub": "bob"})).status == 200

    lines = audit_lines(caplog)
    expected = [(LOGIN, "alice", sid1, SUCCESS), (LOGIN_FAILED, "mallory", None, "invalid_credentials"),
                (LOGIN, "bob", "*", SUCCESS), (LOGIN_FAILED, "bob", None, "invalid_credentials"),
                (REFRESH, "alice", sid1, SUCCESS), (REFRESH_REUSE, "alice", sid1, "refresh_token_reused"),
                (LOGIN, "alice", sid2, SUCCESS), (LOGIN, "alice", sid3, SUCCESS),
                (SESSION_END, "alice", sid2, SUCCESS), (LOGOUT, "alice", sid3, SUCCESS),
                (LOGIN, "alice", sid4, SUCCESS), (PASSWORD_CHANGE, "alice", sid4, SUCCESS),
                (LOGOUT_ALL, "alice", sid5, SUCCESS), (PASSWORD_RESET, "alice", None, SUCCESS),
                (LOGIN, "bob", sid6, SUCCESS), (REFRESH, "bob", sid6, SUCCESS),
                (ADMIN_REVOKE, "bob", None, SUCCESS)]
    got = [(line["event"], line["subject"], "*" if exp[2] == "*" and line["session"] else line["session"],
            line["outcome"]) for line, exp in zip(lines, expected, strict=True)]
    assert got == expected
    for line in lines:
        assert AUDIT_FIELDS <= set(line) and line["client"] == "127.0.0.1" and line["request_id"]
    assert lines[0]["request_id"] == REQUEST_ID   # the client's own id, as its answer carries it
    assert lines[11]["new_session"] == sid5
    assert (lines[-1]["kind"], lines[-1]["target"]) == ("sub", "bob")

    formatter = JsonFormatter()
    everything = "\n".join(formatter.format(record) for record in caplog.records)
    assert caplog.records and AUDIT_LOGGER in everything
    assert sorted(secret for secret in seen.values if secret in everything) == []
