"""Every check of the delegated-login callback, through the gateway app on a real socket: start -> the rogue
OP's authorization endpoint -> callback. The rogue OP (rogue_op.py) misbehaves one way per test; each
refusal is an HTML page with the status of DESIGN (state problems 400; a provider error, a refused exchange
or an invalid ID token 401; an unreachable provider 503), issues nothing, sends the browser nowhere, is
counted by its reason and echoes nothing of the request."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from yarl import URL

from gateway.auth.oauth import clients
from gateway.auth.oauth.pending import COOKIE_PREFIX, PendingLogin, Sealer, cookie_name
from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app

from .gwkit import Gw
from .rogue_op import OMIT, RogueOp, s256

pytestmark = pytest.mark.integration

CLIENT_ID = "tokengate-rogue"
CLIENT_SECRET = "the rogue client's secret"
OTHER_ISSUER = "http://127.0.0.1:9"
SCRIPT = "<script>alert(1)</script>"
RD = "/dashboard"


MakeGw = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def rogue(aiohttp_server: Any, private_keys: dict[str, Any]) -> RogueOp:
    op = RogueOp(private_keys["rsa"], private_keys["foreign_rsa"])
    server = await aiohttp_server(op.app)
    op.port = server.port
    return op


@pytest.fixture
async def make_gw(make_config: Callable[..., GatewayConfig], aiohttp_server: Any, rogue: RogueOp,
                  make_user_agent: Callable[..., aiohttp.ClientSession]) -> AsyncIterator[MakeGw]:
    async def make(**provider: Any) -> Gw:
        rp = {"issuer": rogue.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **provider}
        cfg = make_config(auth={"providers": {"rogue": rp}, "refresh_cookie": {"secure": True}})
        server = await aiohttp_server(build_app(cfg))
        url = str(server.make_url("")).rstrip("/")
        return Gw(server, cfg, "rogue", make_user_agent(url))

    yield make


@pytest.fixture
async def gw(make_gw: MakeGw) -> Gw:
    return await make_gw()


async def start(gw: Gw) -> aiohttp.ClientResponse:
    return await gw.ua.get(f"{gw.url}/auth/oauth/rogue/start", params={"rd": RD}, allow_redirects=False)


async def at_rogue(gw: Gw, authorization_url: str) -> str:
    """The browser at the rogue's authorization endpoint: where it is sent back (the callback with its query)."""
    resp = await gw.ua.get(authorization_url, allow_redirects=False)
    assert resp.status == 302
    return resp.headers["Location"]


async def log_in(gw: Gw) -> aiohttp.ClientResponse:
    """start -> the rogue's authorization endpoint -> the callback's answer."""
    started = await start(gw)
    assert started.status == 302, await started.text()
    return await gw.ua.get(await at_rogue(gw, started.headers["Location"]), allow_redirects=False)


async def assert_refused(gw: Gw, resp: aiohttp.ClientResponse, status: int, reason: str,
                         action: str = "oauth_login", successes: int = 0) -> None:
    """A refusal page: the status, HTML, no Location, no session, the reason counted, nothing echoed."""
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "text/html"
    assert "Location" not in resp.headers
    assert gw.cfg.auth.refresh_cookie.name not in resp.cookies
    assert not [c for c in gw.ua.cookie_jar if c.key == gw.cfg.auth.refresh_cookie.name]
    assert gw.counted(reason, action) == 1
    assert gw.counted("success", action) == successes
    assert "<script" not in body.lower() and "alert(1)" not in body
    assert "/auth/login" in body   # the way back to the sign-in page


# -- the happy path: the rogue OP behaves unless told otherwise -------------------------------------------

async def test_a_well_behaved_rogue_op_signs_the_user_in(gw: Gw, rogue: RogueOp) -> None:
    done = await log_in(gw)
    assert done.status == 302 and done.headers["Location"] == RD
    assert gw.cfg.auth.refresh_cookie.name in done.cookies
    assert gw.counted("success") == 1
    assert await gw.server.app[GATEWAY].users.get("rogue:rogue-user") is not None


async def test_the_code_is_exchanged_with_the_pkce_verifier_and_basic_client_auth(gw: Gw, rogue: RogueOp) -> None:
    assert (await log_in(gw)).status == 302
    [auth], [token] = rogue.authorize_requests, rogue.token_requests
    assert auth["code_challenge_method"] == "S256"
    assert s256(token.form["code_verifier"]) == auth["code_challenge"]
    assert token.form["redirect_uri"] == auth["redirect_uri"] == gw.callback()
    assert token.form["grant_type"] == "authorization_code"
    assert token.client_auth == "client_secret_basic"
    assert token.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert "client_secret" not in token.form


@pytest.mark.parametrize(("client_auth", "secret"), [("client_secret_post", CLIENT_SECRET), ("none", None)])
async def test_the_client_authenticates_by_its_configured_method(make_gw: MakeGw, rogue: RogueOp, client_auth: str,
                                                                 secret: str | None) -> None:
    gw = await make_gw(client_auth=client_auth, client_secret=secret)
    assert (await log_in(gw)).status == 302
    [token] = rogue.token_requests
    assert token.client_auth == client_auth and "Authorization" not in token.headers
    assert token.form["client_id"] == CLIENT_ID and token.form.get("client_secret") == secret
    assert s256(token.form["code_verifier"]) == rogue.authorize_requests[0]["code_challenge"]


@pytest.mark.parametrize(("accepted", "client_auth", "secret"), [
    (["client_secret_post"], "client_secret_basic", CLIENT_SECRET),
    (OMIT, "client_secret_post", CLIENT_SECRET),      # RFC 8414: no list means client_secret_basic alone
    (["client_secret_basic", "client_secret_post"], "none", None),
])
async def test_a_client_auth_the_metadata_does_not_allow_fails_at_the_start(
        make_gw: MakeGw, rogue: RogueOp, accepted: Any, client_auth: str, secret: str | None) -> None:
    rogue.metadata = {"token_endpoint_auth_methods_supported": accepted}
    gw = await make_gw(client_auth=client_auth, client_secret=secret)
    resp = await start(gw)
    await assert_refused(gw, resp, 503, "client_auth_unsupported", action="oauth_start")
    assert rogue.authorize_requests == []


async def test_pkce_s256_is_sent_even_when_the_metadata_does_not_list_it(gw: Gw, rogue: RogueOp) -> None:
    rogue.metadata = {"code_challenge_methods_supported": OMIT}
    assert (await log_in(gw)).status == 302
    [auth], [token] = rogue.authorize_requests, rogue.token_requests
    assert auth["code_challenge_method"] == "S256" and s256(token.form["code_verifier"]) == auth["code_challenge"]


async def test_an_audience_list_with_azp_of_this_client_is_accepted(gw: Gw, rogue: RogueOp) -> None:
    rogue.claims = {"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID}
    assert (await log_in(gw)).status == 302


async def test_no_iss_parameter_is_fine_when_the_provider_does_not_promise_one(gw: Gw, rogue: RogueOp) -> None:
    rogue.metadata = {"authorization_response_iss_parameter_supported": OMIT}
    rogue.callback_iss = OMIT
    assert (await log_in(gw)).status == 302


# -- the ID token ---------------------------------------------------------------------------------------------

ID_TOKEN_CASES: dict[str, tuple[dict[str, Any], str]] = {   # rogue switches -> the reason counted
    "wrong_nonce": ({"claims": {"nonce": "another-login"}}, "nonce_mismatch"),
    "no_nonce": ({"claims": {"nonce": OMIT}}, "nonce_mismatch"),
    "wrong_issuer": ({"claims": {"iss": OTHER_ISSUER}}, "id_token_invalid"),
    "signed_by_a_key_not_in_the_jwks": ({"signing": "foreign_key"}, "id_token_invalid"),
    "signed_by_an_unknown_kid": ({"signing": "foreign_key_unknown_kid"}, "id_token_invalid"),
    "its_own_key_in_the_header": ({"signing": "foreign_key_in_header"}, "id_token_invalid"),
    "alg_none": ({"signing": "none"}, "id_token_invalid"),
    "hs256_with_the_public_key_as_secret": ({"signing": "hs256_public_key"}, "id_token_invalid"),
    "wrong_audience": ({"claims": {"aud": "another-client"}}, "id_token_invalid"),
    "audience_list_without_azp": ({"claims": {"aud": [CLIENT_ID, "another-client"]}}, "id_token_invalid"),
    "azp_another_client": ({"claims": {"azp": "another-client"}}, "id_token_invalid"),
    "expired": ({"claims": {"iat": lambda now: now - 600, "exp": lambda now: now - 120}}, "id_token_invalid"),
    "issued_before_the_login_started": ({"claims": {"iat": lambda now: now - 3600}}, "id_token_invalid"),
    "issued_in_the_future": ({"claims": {"iat": lambda now: now + 3600, "exp": lambda now: now + 7200}},
                             "id_token_invalid"),
    "no_sub": ({"claims": {"sub": OMIT}}, "id_token_invalid"),
    "no_id_token": ({"token_answer": "no_id_token"}, "id_token_missing"),
}


@pytest.mark.parametrize("case", ID_TOKEN_CASES)
async def test_an_invalid_id_token_gets_a_401_page(gw: Gw, rogue: RogueOp, case: str) -> None:
    switches, reason = ID_TOKEN_CASES[case]
    for name, value in switches.items():
        setattr(rogue, name, value)
    resp = await log_in(gw)
    await assert_refused(gw, resp, 401, reason)
    assert len(rogue.token_requests) == 1
    assert await gw.server.app[GATEWAY].users.get("rogue:rogue-user") is None


# -- the code exchange ----------------------------------------------------------------------------------------

EXCHANGE_CASES: dict[str, tuple[str, int, str]] = {   # token_answer -> status, reason
    "invalid_grant": ("invalid_grant", 401, "exchange_failed"),
    "server_error": ("server_error", 401, "exchange_failed"),
    "not_json": ("not_json", 401, "exchange_failed"),
    "huge_body": ("huge", 503, "provider_unreachable"),
    "timeout": ("hang", 503, "provider_unreachable"),
}


@pytest.mark.parametrize("case", EXCHANGE_CASES)
async def test_a_failed_code_exchange_gets_an_error_page(gw: Gw, rogue: RogueOp, monkeypatch: pytest.MonkeyPatch,
                                                         case: str) -> None:
    rogue.token_answer, status, reason = EXCHANGE_CASES[case]
    monkeypatch.setattr(clients, "EXCHANGE_TIMEOUT_S", 0.3)
    resp = await log_in(gw)
    await assert_refused(gw, resp, status, reason)
    assert len(rogue.token_requests) == 1


# -- the authorization response: RFC 9207 iss, the provider's error ---------------------------------------

@pytest.mark.parametrize(("callback_iss", "reason"), [(OTHER_ISSUER, "issuer_mismatch"), (OMIT, "issuer_missing")],
                         ids=["another_issuer", "missing_though_promised"])
async def test_a_wrong_or_missing_iss_parameter_is_refused_before_the_exchange(
        gw: Gw, rogue: RogueOp, callback_iss: Any, reason: str) -> None:
    rogue.callback_iss = callback_iss
    resp = await log_in(gw)
    await assert_refused(gw, resp, 401, reason)
    assert rogue.token_requests == []   # RFC 9207 2.4: checked before the code goes anywhere


@pytest.mark.parametrize("error", [{"error": "access_denied", "error_description": SCRIPT},
                                   {"error": SCRIPT, "error_description": SCRIPT, "error_uri": "javascript:x"}],
                         ids=["access_denied", "script_as_error"])
async def test_a_provider_error_gets_a_401_page_that_echoes_nothing(gw: Gw, rogue: RogueOp,
                                                                    error: dict[str, str]) -> None:
    rogue.callback_error = error
    resp = await log_in(gw)
    await assert_refused(gw, resp, 401, "provider_error")
    assert rogue.token_requests == []


# -- discovery --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["unreachable", "another_issuer"])
async def test_a_start_without_usable_discovery_gets_a_503_page(gw: Gw, rogue: RogueOp, broken: str) -> None:
    if broken == "unreachable":
        rogue.discovery_status = 503
    else:
        rogue.discovery_issuer = OTHER_ISSUER
    resp = await start(gw)
    await assert_refused(gw, resp, 503, "provider_unreachable", action="oauth_start")
    assert not [c for c in gw.ua.cookie_jar if c.key.startswith(COOKIE_PREFIX)]
    assert rogue.discovery_hits == 1 and rogue.authorize_requests == []


async def test_logins_start_again_once_discovery_is_back(gw: Gw, rogue: RogueOp,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "METADATA_RETRY_S", 0.0)
    rogue.discovery_status = 503
    assert (await start(gw)).status == 503
    rogue.discovery_status = 200
    assert (await log_in(gw)).status == 302


# -- the state: checked before anything goes to the provider ---------------------------------------------------

def _flip_a_byte(sealed: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


async def _callback_with(gw: Gw, url: str, cookies: dict[str, str]) -> aiohttp.ClientResponse:
    """The callback ``url`` with exactly these cookies (the browser's jar emptied first)."""
    gw.ua.cookie_jar.clear()
    header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return await gw.ua.get(url, headers={"Cookie": header} if header else {}, allow_redirects=False)


async def test_a_callback_without_state_gets_400(gw: Gw, rogue: RogueOp) -> None:
    started = await start(gw)
    back = URL(await at_rogue(gw, started.headers["Location"]))
    resp = await gw.ua.get(back.without_query_params("state"), allow_redirects=False)
    await assert_refused(gw, resp, 400, "state_missing")
    assert rogue.token_requests == []


async def test_a_callback_with_an_unknown_state_gets_400(gw: Gw, rogue: RogueOp) -> None:
    started = await start(gw)
    back = URL(await at_rogue(gw, started.headers["Location"]))
    resp = await gw.ua.get(back.update_query(state="A" * 43), allow_redirects=False)
    await assert_refused(gw, resp, 400, "state_unknown")
    assert rogue.token_requests == []


async def test_a_state_with_script_is_not_echoed(gw: Gw, rogue: RogueOp) -> None:
    resp = await gw.ua.get(f"{gw.callback()}?{urlencode({'state': SCRIPT, 'code': SCRIPT})}", allow_redirects=False)
    await assert_refused(gw, resp, 400, "state_missing")


async def test_a_tampered_pending_login_cookie_gets_400(gw: Gw, rogue: RogueOp) -> None:
    started = await start(gw)
    [pending] = [c for c in started.cookies.values() if c.key.startswith(COOKIE_PREFIX)]
    back = await at_rogue(gw, started.headers["Location"])
    resp = await _callback_with(gw, back, {pending.key: _flip_a_byte(pending.value)})
    await assert_refused(gw, resp, 400, "state_invalid")
    assert rogue.token_requests == []


async def test_an_expired_pending_login_gets_400(gw: Gw, rogue: RogueOp) -> None:
    pending = PendingLogin.begin("rogue", gw.callback(), RD, time.time() - 601)   # sealed 10 minutes ago
    sealed = Sealer.from_config(gw.cfg.tokens).seal(pending)
    authorize = URL(f"{rogue.issuer}/authorize").with_query(
        response_type="code", client_id=CLIENT_ID, redirect_uri=gw.callback(), state=pending.state,
        nonce=pending.nonce, code_challenge=pending.challenge, code_challenge_method="S256")
    back = await at_rogue(gw, str(authorize))
    resp = await _callback_with(gw, back, {cookie_name(pending.state): sealed})
    await assert_refused(gw, resp, 400, "state_invalid")
    assert rogue.token_requests == []


async def test_a_pending_login_sealed_by_another_gateway_gets_400(gw: Gw, rogue: RogueOp) -> None:
    started = await start(gw)
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    back = await at_rogue(gw, started.headers["Location"])
    forged = Sealer(b"k" * 32).seal(PendingLogin("rogue", state, "n", "v" * 43, gw.callback(), RD, 2e9))
    resp = await _callback_with(gw, back, {cookie_name(state): forged})
    await assert_refused(gw, resp, 400, "state_invalid")
    assert rogue.token_requests == []


async def test_a_callback_used_twice_gets_400_and_exchanges_once(gw: Gw, rogue: RogueOp) -> None:
    started = await start(gw)
    [pending] = [c for c in started.cookies.values() if c.key.startswith(COOKIE_PREFIX)]
    back = await at_rogue(gw, started.headers["Location"])
    assert (await gw.ua.get(back, allow_redirects=False)).status == 302
    resp = await _callback_with(gw, back, {pending.key: pending.value})
    await assert_refused(gw, resp, 400, "state_used", successes=1)
    assert len(rogue.token_requests) == 1
