"""Delegated login with ``type: github`` against a stand-in for github.com (github_standin.py): the whole
flow through the gateway app on a real socket, driven like a browser (cookies kept, redirects followed by
hand), checking what GitHub would have received and who the gateway signed in."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.auth.oauth.pending import COOKIE_PREFIX
from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app

from .github_standin import GithubStandIn, GithubUser, challenge_of, email
from .gwkit import Gw

pytestmark = pytest.mark.integration

CLIENT_ID = "Ov23liStandInClient01"
CLIENT_SECRET = "standin-client-secret-0123456789abcdef"
CALLBACK = "http://127.0.0.1/auth/oauth/github/callback"   # registered; on loopback GitHub allows any port
UserAgent = Callable[..., aiohttp.ClientSession]


MakeGw = Callable[..., Awaitable[Gw]]


@dataclass
class Login:
    started: aiohttp.ClientResponse   # the gateway's start: 302 to GitHub
    back: URL                         # where GitHub sent the browser back
    done: aiohttp.ClientResponse      # the gateway's callback


@pytest.fixture
async def github(aiohttp_server: Any) -> GithubStandIn:
    standin = GithubStandIn(CLIENT_ID, CLIENT_SECRET, CALLBACK)
    server = await aiohttp_server(standin.app())
    standin.url = str(server.make_url("")).rstrip("/")
    return standin


@pytest.fixture
async def make_gw(make_config: Callable[..., GatewayConfig], aiohttp_server: Any, github: GithubStandIn,
                  echo_upstream: TestServer) -> MakeGw:
    async def make(**provider: Any) -> Gw:
        settings = {"type": "github", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "url": github.url,
                    "api_url": github.url, **provider}
        upstream = str(echo_upstream.make_url("")).rstrip("/")
        cfg = make_config(auth={"providers": {"github": settings}, "redirect_allowlist": ["https://app.example.test"],
                                "refresh_cookie": {"secure": True}},
                          upstreams={"accounts": {"url": upstream}, "orders": {"url": upstream}})
        return Gw(await aiohttp_server(build_app(cfg)), cfg, "github")

    return make


async def sign_in(ua: aiohttp.ClientSession, gw: Gw, rd: str = "/dashboard") -> Login:
    """Start at the gateway, approve at GitHub, come back to the callback; every redirect by hand."""
    started = await ua.get(f"{gw.url}/auth/oauth/github/start", params={"rd": rd}, allow_redirects=False)
    assert started.status == 302, await started.text()
    at_github = await ua.get(started.headers["Location"], allow_redirects=False)
    assert at_github.status == 302, await at_github.text()
    back = URL(at_github.headers["Location"])
    return Login(started, back, await ua.get(back, allow_redirects=False))


def query_of(url: str | URL) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(url)).query, keep_blank_values=True)


async def access_token(ua: aiohttp.ClientSession, gw: Gw) -> str:
    """A fresh access token of the session ``ua`` holds (its refresh cookie, rotated)."""
    resp = await ua.post(f"{gw.url}/auth/refresh")
    assert resp.status == 200
    return str((await resp.json())["access_token"])


async def access_claims(ua: aiohttp.ClientSession, gw: Gw) -> dict[str, Any]:
    return dict(jwt.decode(await access_token(ua, gw), options={"verify_signature": False}))


def assert_refused(login: Login, status: int = 401) -> None:
    assert login.done.status == status and login.done.content_type == "text/html"
    assert "refresh_token" not in login.done.cookies and "Location" not in login.done.headers


async def test_the_start_sends_the_browser_to_github_with_state_pkce_s256_and_the_scopes(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await ua.get(f"{gw.url}/auth/oauth/github/start", params={"rd": "/x"}, allow_redirects=False)
    assert started.status == 302
    location = urlsplit(started.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{github.url}/login/oauth/authorize"
    query = query_of(started.headers["Location"])
    assert query["client_id"] == [CLIENT_ID] and query["redirect_uri"] == [gw.callback()]
    assert query["scope"] == ["read:user user:email"] and len(query["state"][0]) >= 32
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert "nonce" not in query and "client_secret" not in query
    assert [c.key for c in started.cookies.values() if c.key.startswith(COOKIE_PREFIX)]


async def test_a_github_login_creates_the_account_by_numeric_id_and_issues_the_gateways_session(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    login = await sign_in(ua, gw)
    assert login.done.status == 302 and login.done.headers["Location"] == "/dashboard"
    assert "refresh_token" in login.done.cookies

    # What GitHub received: the code with the verifier of the start's challenge, the same redirect_uri,
    # the secret in the body (client_secret_post, the default), and the token only on the API calls.
    authorize = github.authorizations[-1]
    [exchange] = github.token_requests
    assert exchange.answer.keys() >= {"access_token"} and exchange.status == 200
    assert exchange.client_auth == "client_secret_post" and exchange.basic is None
    assert exchange.form["client_id"] == CLIENT_ID and exchange.form["client_secret"] == CLIENT_SECRET
    assert challenge_of(exchange.form["code_verifier"]) == authorize["code_challenge"]
    assert exchange.form["redirect_uri"] == authorize["redirect_uri"] == gw.callback()
    assert "application/json" in exchange.accept
    token = exchange.answer["access_token"]
    assert [(r.path, r.authorization) for r in github.api_requests] == [("/user", f"Bearer {token}"),
                                                                        ("/user/emails", f"Bearer {token}")]
    assert token not in str(login.back) and all(token not in v for v in login.done.headers.values())

    users = gw.server.app[GATEWAY].users
    account = await users.get("github:123")
    assert account is not None and await users.get("github:octocat") is None
    assert account.email == "octocat@example.test" and account.roles == ("user",) and account.password_hash == ""
    claims = await access_claims(ua, gw)
    assert claims["sub"] == "github:123" and claims["roles"] == ["user"]


async def test_client_secret_basic_sends_the_secret_in_the_authorization_header_when_configured(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw(client_auth="client_secret_basic")
    login = await sign_in(make_user_agent(gw.url), gw)
    assert login.done.status == 302 and "refresh_token" in login.done.cookies
    [exchange] = github.token_requests
    assert exchange.client_auth == "client_secret_basic" and exchange.basic == (CLIENT_ID, CLIENT_SECRET)
    assert "client_secret" not in exchange.form


async def test_a_wrong_client_secret_is_refused_by_github_with_status_200_and_the_login_fails(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw(client_secret="not-the-registered-secret-0123456789")
    login = await sign_in(make_user_agent(gw.url), gw)
    assert_refused(login)
    [exchange] = github.token_requests
    assert exchange.status == 200 and exchange.answer["error"] == "incorrect_client_credentials"
    assert github.api_requests == []


@pytest.mark.parametrize("error", ["bad_verification_code", "redirect_uri_mismatch", "unverified_user_email"])
async def test_a_token_error_answered_with_status_200_is_a_refused_login(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn, error: str) -> None:
    gw = await make_gw()
    github.token_error = error
    login = await sign_in(make_user_agent(gw.url), gw)
    assert_refused(login)
    assert [(r.status, r.answer["error"]) for r in github.token_requests] == [(200, error)]
    assert github.api_requests == [] and await gw.server.app[GATEWAY].users.get("github:123") is None


@pytest.mark.parametrize(("failing", "status"), [("user", 401), ("user", 500), ("emails", 401), ("emails", 500),
                                                 ("emails", 404)])
async def test_a_failing_github_api_call_refuses_the_login(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn, failing: str, status: int) -> None:
    gw = await make_gw()
    setattr(github, f"{failing}_status", status)
    login = await sign_in(make_user_agent(gw.url), gw)
    assert_refused(login)
    assert github.api_requests[-1].status == status
    assert await gw.server.app[GATEWAY].users.get("github:123") is None


@pytest.mark.parametrize(("emails", "kept"), [
    ([email("octo@example.test", primary=True), email("other@example.test")], "octo@example.test"),
    ([email("octo@example.test", primary=True, verified=False), email("other@example.test")], None),
    ([email("octo@example.test"), email("other@example.test")], None),
    ([], None),
], ids=["verified-primary", "unverified-primary", "verified-non-primary-only", "none"])
async def test_the_account_keeps_the_email_only_when_it_is_the_verified_primary(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn, emails: list[dict[str, Any]],
        kept: str | None) -> None:
    gw = await make_gw()
    github.user = GithubUser(id=4242, login="octo", public_email="public@example.test", emails=emails)
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw)).done.status == 302
    account = await gw.server.app[GATEWAY].users.get("github:4242")
    assert account is not None and account.email == kept   # the profile's public address is never used
    assert (await access_claims(ua, gw))["sub"] == "github:4242"


async def test_the_verified_primary_is_found_beyond_githubs_first_page_of_addresses(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw()
    others = [email(f"alias{i}@example.test") for i in range(40)]   # the default page holds 30
    github.user = GithubUser(id=77, login="many", emails=[*others, email("many@example.test", primary=True)])
    assert (await sign_in(make_user_agent(gw.url), gw)).done.status == 302
    account = await gw.server.app[GATEWAY].users.get("github:77")
    assert account is not None and account.email == "many@example.test"


async def test_roles_map_from_a_field_of_the_github_user_or_fall_back_to_the_default(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw(roles={"claim": "login", "map": {"octocat": ["admin"]}, "default": ["user"]})
    octocat = make_user_agent(gw.url)
    assert (await sign_in(octocat, gw)).done.status == 302
    assert (await access_claims(octocat, gw))["roles"] == ["admin"]
    token = await access_token(octocat, gw)
    admin = await octocat.get(f"{gw.url}/api/admin/x", headers={"Authorization": f"Bearer {token}"})
    assert admin.status == 200   # the gateway's own token, through the pipeline

    github.user = GithubUser(id=5, login="someone-else")
    other = make_user_agent(gw.url)
    assert (await sign_in(other, gw)).done.status == 302
    claims = await access_claims(other, gw)
    assert claims["sub"] == "github:5" and claims["roles"] == ["user"]
    account = await gw.server.app[GATEWAY].users.get("github:5")
    assert account is not None and account.roles == ("user",)


async def test_roles_map_from_the_numeric_id_which_unlike_the_login_cannot_pass_to_someone_else(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    # A login can be renamed and then registered by another person; the id stays with the account.
    gw = await make_gw(roles={"claim": "id", "map": {"123": ["admin"]}, "default": ["user"]})
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw)).done.status == 302
    assert (await access_claims(ua, gw))["roles"] == ["admin"]
    github.user = GithubUser(id=124, login="octocat")   # the login taken over by someone else
    impostor = make_user_agent(gw.url)
    assert (await sign_in(impostor, gw)).done.status == 302
    claims = await access_claims(impostor, gw)
    assert claims["sub"] == "github:124" and claims["roles"] == ["user"]


async def test_link_by_verified_email_signs_into_the_local_account_with_that_verified_primary(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw(link_by_verified_email=True)
    users = gw.server.app[GATEWAY].users
    await users.add("carol-local", "a long password 123", ["admin"], "CAROL@example.test")
    github.user = GithubUser(id=9, login="carol", emails=[email("carol@example.test", primary=True)])
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw)).done.status == 302
    claims = await access_claims(ua, gw)
    assert claims["sub"] == "carol-local" and claims["roles"] == ["admin"]
    assert await users.get("github:9") is None


@pytest.mark.parametrize("emails", [
    [email("carol@example.test", primary=True, verified=False)],
    [email("elsewhere@example.test", primary=True), email("carol@example.test")],
    [email("elsewhere@example.test", primary=True, verified=False), email("carol@example.test")],
], ids=["unverified-primary", "verified-non-primary", "verified-non-primary-beside-unverified-primary"])
async def test_link_by_verified_email_never_links_an_unverified_or_non_primary_address(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn, emails: list[dict[str, Any]]) -> None:
    gw = await make_gw(link_by_verified_email=True)
    users = gw.server.app[GATEWAY].users
    await users.add("carol-local", "a long password 123", ["admin"], "carol@example.test")
    github.user = GithubUser(id=10, login="mallory", public_email="carol@example.test", emails=emails)
    ua = make_user_agent(gw.url)
    assert (await sign_in(ua, gw)).done.status == 302
    claims = await access_claims(ua, gw)
    assert claims["sub"] == "github:10" and claims["roles"] == ["user"]


async def test_a_replayed_callback_is_refused_and_the_code_is_exchanged_once(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw()
    ua = make_user_agent(gw.url)
    started = await ua.get(f"{gw.url}/auth/oauth/github/start", allow_redirects=False)
    back = URL((await ua.get(started.headers["Location"], allow_redirects=False)).headers["Location"])
    sealed = {c.key: c.value for c in ua.cookie_jar if c.key.startswith(COOKIE_PREFIX)}
    assert (await ua.get(back, allow_redirects=False)).status == 302
    replay = make_user_agent(gw.url)   # the same answer again, with the pending-login cookie put back
    replay.cookie_jar.update_cookies(sealed, response_url=URL(gw.callback()))
    again = await replay.get(back, allow_redirects=False)
    assert again.status == 400 and again.content_type == "text/html" and "refresh_token" not in again.cookies
    assert len(github.token_requests) == 1


async def test_access_denied_at_github_is_a_refused_login_without_a_code_exchange(
        make_gw: MakeGw, make_user_agent: UserAgent, github: GithubStandIn) -> None:
    gw = await make_gw()
    github.deny = True
    login = await sign_in(make_user_agent(gw.url), gw)
    assert query_of(login.back)["error"] == ["access_denied"] and "code" not in query_of(login.back)
    assert_refused(login)
    assert github.token_requests == [] and github.api_requests == []


async def test_the_standin_keeps_githubs_rules_the_gateway_relies_on(github: GithubStandIn) -> None:
    """The stand-in itself: a wrong verifier, a reused code and a redirect_uri off the registered callback
    are refused as GitHub documents, so the tests above would notice a client that gets them wrong."""
    verifier = "v" * 43
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def code_for(redirect_uri: str) -> dict[str, list[str]]:
            resp = await http.get(f"{github.url}/login/oauth/authorize", allow_redirects=False, params={
                "client_id": CLIENT_ID, "redirect_uri": redirect_uri, "state": "s", "scope": "read:user",
                "code_challenge": challenge_of(verifier), "code_challenge_method": "S256"})
            assert resp.status == 302
            return query_of(resp.headers["Location"])

        async def exchange(code: str, verifier: str, **extra: str) -> dict[str, str]:
            form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code, "code_verifier": verifier,
                    "redirect_uri": "http://127.0.0.1:5/auth/oauth/github/callback", **extra}
            resp = await http.post(f"{github.url}/login/oauth/access_token", data=form,
                                   headers={"Accept": "application/json"})
            assert resp.status == 200
            return dict(await resp.json())

        mismatch = await code_for("http://127.0.0.2:5/auth/oauth/github/callback")
        assert mismatch["error"] == ["redirect_uri_mismatch"] and mismatch["state"] == ["s"]
        code = (await code_for("http://127.0.0.1:5/auth/oauth/github/callback"))["code"][0]
        assert (await exchange(code, "w" * 43))["error"] == "bad_verification_code"
        code = (await code_for("http://127.0.0.1:5/auth/oauth/github/callback"))["code"][0]
        assert (await exchange(code, verifier))["token_type"] == "bearer"
        assert (await exchange(code, verifier))["error"] == "bad_verification_code"
        basic = base64.b64encode(f"{CLIENT_ID}:wrong".encode()).decode()
        code = (await code_for("http://127.0.0.1:5/auth/oauth/github/callback/deeper"))["code"][0]
        resp = await http.post(f"{github.url}/login/oauth/access_token", headers={"Authorization": f"Basic {basic}"},
                               data={"code": code, "code_verifier": verifier})
        assert resp.status == 200 and parse_qs(await resp.text())["error"] == ["incorrect_client_credentials"]
        assert (await http.get(f"{github.url}/user", headers={"Authorization": "Bearer gho_nope"})).status == 401
