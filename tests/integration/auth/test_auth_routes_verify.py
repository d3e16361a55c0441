"""GET /auth/verify (forward-auth), browser mode's cookies and CSRF check, and the rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth.ratelimit import client_address
from gateway.errors import CsrfFailed
from gateway.steps.cookies import CSRF_HEADER, extract_cookie_token
from tests.conftest import bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import Auth, MakeAuth, cookie_header, error_code, set_cookies

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
auth, backend, make_auth, store_url = shared.auth, shared.backend, shared.make_auth, shared.store_url


def forwarded(method: str, uri: str) -> dict[str, str]:
    return {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri}


# --- forward-auth ---------------------------------------------------------------------------------

async def test_verify_answers_200_with_the_identity_headers(auth: Auth) -> None:
    token = (await auth.session("alice"))["access_token"]
    resp = await auth.client.get("/auth/verify", headers={**bearer(token), **forwarded("GET", "/api/orders?x=1")})
    assert resp.status == 200
    assert resp.headers["X-User-Id"] == "alice" and resp.headers["X-User-Roles"] == "user"
    assert resp.headers["X-User-Email"] == "alice@example.test"


@pytest.mark.parametrize("method, uri, status, code", [
    ("POST", "/api/orders", 403, "forbidden"),           # alice is no admin
    ("GET", "/api/admin/users", 403, "forbidden"),
    ("GET", "/nowhere", 404, "no_route"),
    ("GET", "/api/%2e%2e/%2e%2e/admin", 400, "bad_path"),
    ("GET", "/api/orders/../admin", 403, "forbidden"),   # normalised before matching
])
async def test_verify_refuses_what_the_proxy_would_refuse(auth: Auth, method: str, uri: str, status: int,
                                                          code: str) -> None:
    token = (await auth.session("alice"))["access_token"]
    resp = await auth.client.get("/auth/verify", headers={**bearer(token), **forwarded(method, uri)})
    assert resp.status == status and await error_code(resp) == code
    assert "X-User-Id" not in resp.headers


async def test_verify_without_a_token_is_401(auth: Auth) -> None:
    resp = await auth.client.get("/auth/verify", headers=forwarded("GET", "/api/orders"))
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'


async def test_verify_of_a_revoked_token_is_401(auth: Auth) -> None:
    token = (await auth.session())["access_token"]
    await auth.post("logout", headers=bearer(token))
    resp = await auth.client.get("/auth/verify", headers={**bearer(token), **forwarded("GET", "/api/orders")})
    assert resp.status == 401 and await error_code(resp) == "token_revoked"


async def test_verify_of_a_public_route_needs_no_token(auth: Auth) -> None:
    resp = await auth.client.get("/auth/verify", headers=forwarded("GET", "/api/public/x"))
    assert resp.status == 200 and "X-User-Id" not in resp.headers


async def test_verify_defaults_to_get_and_the_root(auth: Auth) -> None:
    token = (await auth.session("bob"))["access_token"]
    resp = await auth.client.get("/auth/verify", headers=bearer(token))
    assert resp.status == 404   # nothing is routed at /


async def test_verify_takes_the_subrequests_method_and_nginx_headers(auth: Auth) -> None:
    token = (await auth.session("bob"))["access_token"]
    resp = await auth.client.post("/auth/verify", headers={**bearer(token), "X-Original-URI": "/api/orders"})
    assert resp.status == 200 and resp.headers["X-User-Roles"] == "admin"


async def test_verify_refuses_two_forwarded_uris(auth: Auth) -> None:
    token = (await auth.session("bob"))["access_token"]
    headers = [("Authorization", f"Bearer {token}"), ("X-Forwarded-Uri", "/api/public"),
               ("X-Forwarded-Uri", "/api/admin")]
    resp = await auth.client.get("/auth/verify", headers=headers)
    assert resp.status == 400 and await error_code(resp) == "conflicting_headers"


# --- forward-auth: the proxy's X-Original-* against a client's X-Forwarded-* ------------------------
# Behind nginx auth_request the subrequest carries nginx's X-Original-Method/-URI *and* every header
# the client sent, so a client can add X-Forwarded-* of its own. Copies that disagree are a 400.

Headers = list[tuple[str, str]]


def original(method: str, uri: str) -> Headers:
    """What nginx's `proxy_set_header X-Original-*` adds to the auth subrequest."""
    return [("X-Original-Method", method), ("X-Original-URI", uri)]


async def verify_with(auth: Auth, headers: Headers, token: str | None = None) -> aiohttp.ClientResponse:
    sent = [("Authorization", f"Bearer {token}")] if token is not None else []
    return await auth.client.get("/auth/verify", headers=[*sent, *headers])


async def test_client_forwarded_uri_cannot_turn_a_401_into_a_200(auth: Auth) -> None:
    """Before the fix X-Forwarded-Uri won: 200 for an anonymous DELETE /api/admin/users."""
    asked = original("DELETE", "/api/admin/users")
    assert (await verify_with(auth, asked)).status == 401
    resp = await verify_with(auth, [*asked, ("X-Forwarded-Uri", "/api/public")])
    assert resp.status == 400 and await error_code(resp) == "conflicting_headers"
    assert "X-User-Id" not in resp.headers


async def test_client_forwarded_method_cannot_turn_a_403_into_a_200(auth: Auth) -> None:
    """Before the fix X-Forwarded-Method won: 200 for alice (no admin) deleting an order."""
    token = (await auth.session("alice"))["access_token"]
    asked = original("DELETE", "/api/orders/7")
    resp = await verify_with(auth, asked, token)
    assert resp.status == 403 and await error_code(resp) == "forbidden"
    resp = await verify_with(auth, [*asked, ("X-Forwarded-Method", "GET")], token)
    assert resp.status == 400 and await error_code(resp) == "conflicting_headers"
    assert "X-User-Id" not in resp.headers


@pytest.mark.parametrize("method, uri, status", [("GET", "/api/orders?x=1", 200), ("DELETE", "/api/orders/7", 403),
                                                 ("GET", "/nowhere", 404)])
async def test_both_families_agreeing_get_the_usual_answer(auth: Auth, method: str, uri: str, status: int) -> None:
    token = (await auth.session("alice"))["access_token"]
    resp = await verify_with(auth, [*original(method, uri), *forwarded(method, uri).items()], token)
    assert resp.status == status
    assert resp.headers.get("X-User-Id") == ("alice" if status == 200 else None)


DISAGREEING: dict[str, Headers] = {
    "uri": [*original("GET", "/api/orders"), ("X-Forwarded-Uri", "/api/public")],
    "method": [*original("DELETE", "/api/orders/7"), ("X-Forwarded-Method", "GET")],
    "uri copies": [("X-Original-URI", "/api/orders"), ("X-Original-URI", "/api/public")],
    "method copies": [("X-Forwarded-Uri", "/api/orders"), ("X-Forwarded-Method", "GET"),
                      ("X-Forwarded-Method", "DELETE")],
    "uri as sent": [("X-Original-URI", "/api/orders"), ("X-Forwarded-Uri", "/api/%6Frders")],   # same path once decoded
    "query as sent": [("X-Original-URI", "/api/orders?a=1"), ("X-Forwarded-Uri", "/api/orders?a=2")],
    "method as sent": [("X-Original-URI", "/api/orders"), ("X-Original-Method", "GET"),
                       ("X-Forwarded-Method", "get")],
    "underscore uri": [*original("DELETE", "/api/admin/users"), ("X_Forwarded_Uri", "/api/public")],
    "underscore method": [*original("DELETE", "/api/orders/7"), ("x-forwarded_method", "GET")],
    "underscore copy": [("X-Original-URI", "/api/admin/users"), ("x_ORIGINAL_uri", "/api/public")],
}


@pytest.mark.parametrize("who", ["no token", "bad token", "alice", "bob"])
@pytest.mark.parametrize("case", DISAGREEING)
async def test_disagreeing_copies_are_400_whatever_the_token(auth: Auth, mint: Callable[..., str], who: str,
                                                              case: str) -> None:
    tokens = {"no token": None, "bad token": mint(sub="alice", key="not-the-gateways-secret-" * 2),
              "alice": (await auth.session("alice"))["access_token"],
              "bob": (await auth.session("bob"))["access_token"]}
    resp = await verify_with(auth, DISAGREEING[case], tokens[who])
    assert resp.status == 400 and await error_code(resp) == "conflicting_headers"
    assert "X-User-Id" not in resp.headers and "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("headers", [
    [*original("GET", "/api/orders"), ("X-Original-URI", "/api/orders"), ("X-Original-Method", "GET")],
    [("X-Forwarded-Uri", "/api/orders"), ("X-Forwarded-Uri", "/api/orders"), ("X-Original-URI", "/api/orders")],
    [*original("GET", "/api/orders"), ("x_original_uri", "/api/orders"), ("X_Forwarded_Method", "GET")],
], ids=["same name twice", "both families", "underscore spellings"])
async def test_identical_copies_are_fine(auth: Auth, headers: Headers) -> None:
    token = (await auth.session("alice"))["access_token"]
    resp = await verify_with(auth, headers, token)
    assert resp.status == 200 and resp.headers["X-User-Id"] == "alice"


async def test_an_underscore_spelling_alone_is_read_as_the_header(auth: Auth) -> None:
    token = (await auth.session("alice"))["access_token"]
    resp = await verify_with(auth, [("X_Original_Method", "DELETE"), ("x_original_uri", "/api/orders/7")], token)
    assert resp.status == 403 and await error_code(resp) == "forbidden"


# --- browser mode ---------------------------------------------------------------------------------

@pytest.fixture
async def browser(make_auth: MakeAuth) -> Auth:
    return await make_auth(access_cookie=True)


async def browser_cookies(auth: Auth) -> dict[str, str]:
    resp = await auth.login()
    return {name: morsel.value for name, morsel in set_cookies(resp).items()}


async def test_browser_login_sets_access_and_csrf_cookies(browser: Auth) -> None:
    resp = await browser.login()
    jar = set_cookies(resp)
    access, csrf = jar["access_token"], jar["csrf_token"]
    assert access.value == (await resp.json())["access_token"]
    # Lax: a page reached from another site (a provider's login, a link in a mail) must arrive signed in.
    assert access["httponly"] and access["secure"] and access["path"] == "/" and access["samesite"] == "Lax"
    assert csrf["samesite"] == "Lax" and jar["refresh_token"]["samesite"] == "Strict"
    assert access["max-age"] == "900"
    assert not csrf["httponly"] and csrf["path"] == "/" and len(csrf.value) >= 43


async def test_browser_refresh_keeps_the_csrf_token(browser: Auth) -> None:
    cookies = await browser_cookies(browser)
    resp = await browser.post("refresh", headers=cookie_header(**cookies))
    assert resp.status == 200
    jar = set_cookies(resp)
    assert jar["csrf_token"].value == cookies["csrf_token"] and jar["access_token"].value != cookies["access_token"]


@pytest.mark.parametrize("csrf, status", [(None, 403), ("wrong", 403), ("", 403), ("right", 204)])
async def test_cookie_logout_needs_the_csrf_header(browser: Auth, csrf: str | None, status: int) -> None:
    cookies = await browser_cookies(browser)
    headers = cookie_header(**cookies)
    if csrf is not None:
        headers[CSRF_HEADER] = cookies["csrf_token"] if csrf == "right" else csrf
    resp = await browser.post("logout", headers=headers)
    assert resp.status == status
    if status == 403:
        assert await error_code(resp) == "csrf_failed"
    else:
        cleared = set_cookies(resp)
        assert {cleared[n]["max-age"] for n in ("refresh_token", "access_token", "csrf_token")} == {"0"}


@pytest.mark.parametrize("method, send_csrf, status", [("GET", False, 200), ("HEAD", False, 200),
                                                       ("POST", False, 403), ("DELETE", True, 200)])
async def test_forward_auth_checks_csrf_for_the_forwarded_method(browser: Auth, method: str, send_csrf: bool,
                                                                 status: int) -> None:
    cookies = await browser_cookies(browser)
    cookies_only = {"access_token": cookies["access_token"], "csrf_token": cookies["csrf_token"]}
    headers = {**cookie_header(**cookies_only), **forwarded(method, "/api/accounts/1/profile")}
    if send_csrf:
        headers[CSRF_HEADER] = cookies["csrf_token"]
    resp = await browser.client.get("/auth/verify", headers=headers)
    assert resp.status == status


def test_extract_cookie_token_enforces_double_submit(make_config: Any) -> None:
    cfg = make_config(auth={"access_cookie": True})
    cookie = {"Cookie": "access_token=tok; csrf_token=" + "c" * 43}
    assert extract_cookie_token(make_mocked_request("GET", "/x", headers=cookie), cfg) == "tok"
    with pytest.raises(CsrfFailed):
        extract_cookie_token(make_mocked_request("PATCH", "/x", headers=cookie), cfg)
    with pytest.raises(CsrfFailed):
        extract_cookie_token(make_mocked_request("PUT", "/x", headers={**cookie, CSRF_HEADER: "c" * 42}), cfg)
    good = make_mocked_request("POST", "/x", headers={**cookie, CSRF_HEADER: "c" * 43})
    assert extract_cookie_token(good, cfg) == "tok"
    assert extract_cookie_token(make_mocked_request("GET", "/x?access_token=tok"), cfg) is None
    assert extract_cookie_token(make_mocked_request("GET", "/x", headers=cookie), make_config()) is None


# --- rate limits ----------------------------------------------------------------------------------

async def test_login_over_the_limit_gets_429_with_retry_after(make_auth: MakeAuth) -> None:
    auth = await make_auth(rate_limits={"login": "3/min"})
    for _ in range(3):
        assert (await auth.login(password="wrong")).status == 401
    resp = await auth.login()   # even the right password
    assert resp.status == 429 and await error_code(resp) == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_login_limit_counts_per_username_across_addresses(make_auth: MakeAuth) -> None:
    auth = await make_auth(rate_limits={"login": "2/min"}, listen={"trusted_proxies": ["127.0.0.0/8"]})
    statuses = [(await auth.login("alice", "wrong", headers={"X-Forwarded-For": f"203.0.113.{i}"})).status
                for i in range(3)]
    assert statuses == [401, 401, 429]
    assert (await auth.login("bob", headers={"X-Forwarded-For": "203.0.113.9"})).status == 200


async def test_refresh_over_the_limit_gets_429(make_auth: MakeAuth) -> None:
    auth = await make_auth(rate_limits={"refresh": "2/min"})
    statuses = [(await auth.refresh("unknown-token")).status for _ in range(3)]
    assert statuses == [401, 401, 429]


async def test_limits_are_shared_by_every_instance_on_one_store(make_auth: MakeAuth, backend: str) -> None:
    if backend == "memory":
        pytest.skip("the embedded store lives in one process")
    first = await make_auth(rate_limits={"login": "2/min"})
    second = await make_auth(rate_limits={"login": "2/min"})
    assert (await first.login(password="wrong")).status == 401
    assert (await second.login(password="wrong")).status == 401
    assert (await first.login()).status == 429


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("198.51.100.7", "203.0.113.1", [], "198.51.100.7"),                     # untrusted peer: XFF ignored
    ("10.0.0.2", "203.0.113.1", ["10.0.0.0/8"], "203.0.113.1"),
    ("10.0.0.2", "6.6.6.6, 203.0.113.1, 10.0.0.3", ["10.0.0.0/8"], "203.0.113.1"),  # rightmost untrusted
    ("2001:db8::1", "", [], "2001:db8::/64"),
])
def test_client_address(make_config: Any, peer: str, xff: str, trusted: list[str], expected: str) -> None:
    cfg = make_config(listen={"trusted_proxies": trusted})
    headers = {"X-Forwarded-For": xff} if xff else {}
    request = make_mocked_request("POST", "/auth/login", headers=headers,
                                  transport=_Transport(peer))
    assert client_address(request, cfg.listen.trusted_proxies) == expected


class _Transport(asyncio.Transport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self._peer, 0) if name == "peername" else default
