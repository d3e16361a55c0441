"""DPoP (RFC 9449) over real sockets: login and refresh with a proof bind the tokens to its key, a
bound refresh token needs a proof by that key, and proxied requests with a bound token need a fresh
proof (htm, htu, ath, iat, single-use jti) by it; unbound tokens where DPoP is required are refused."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.auth.accounts.directory import StoreUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.config.load import GatewayConfig
from gateway.pipeline import GATEWAY
from gateway.steps.dpop import thumbprint
from gateway.steps.dpop_nonce import SLOT_S
from tests.conftest import CHEAP_ARGON2, bearer
from tests.integration.auth import test_auth_routes as shared
from tests.integration.auth.test_auth_routes import (GENEROUS, Auth, add_accounts, assemble_app, claims_of, error_code,
                                                     until)
from tests.unit.steps.dpop_proofs import ath, good_header, key, public_jwk, sign

backend, store_url = shared.backend, shared.store_url   # pytest finds fixtures among a module's globals

ROUTES = [
    {"path": "/api/orders", "upstream": "orders", "roles": ["user", "admin"]},
    {"path": "/api/bound", "upstream": "orders", "dpop": "required"},
    {"path": "/_echo/stream", "upstream": "orders", "roles": ["user", "admin"]},   # a streamed answer
]
MakeDpopAuth = Callable[..., Awaitable[Auth]]


@pytest.fixture
def make_dpop_auth(make_config: Callable[..., GatewayConfig], aiohttp_client: Any, echo_upstream: TestServer,
                   store_url: str) -> MakeDpopAuth:
    """make_dpop_auth(listen={...}, auth={...}, **tokens.dpop) -> Auth on a fresh app with ROUTES and
    accounts alice, bob; ``listen`` and ``auth`` add to those sections."""

    async def make(*, listen: dict[str, Any] | None = None, auth: dict[str, Any] | None = None, **dpop: Any) -> Auth:
        upstream = str(echo_upstream.make_url(""))
        sections = {"store": {"url": store_url},
                    "upstreams": {"accounts": {"url": upstream}, "orders": {"url": upstream}},
                    "auth": {"rate_limits": GENEROUS, "refresh_token_in_body": True, **(auth or {})},
                    "routes": ROUTES, "tokens": {"dpop": dpop}, "listen": {"host": "127.0.0.1", **(listen or {})}}
        cfg = await asyncio.to_thread(make_config, **sections)
        client = await aiohttp_client(assemble_app(cfg), cookie_jar=aiohttp.DummyCookieJar())
        gw = client.app[GATEWAY]
        gw.hasher.close()
        gw.hasher = PasswordHasher(CHEAP_ARGON2)
        gw.users = StoreUsers(gw.store, gw.hasher)
        await add_accounts(gw)
        await until(lambda: gw.denylist.in_sync)
        return Auth(client, gw, cfg)

    return make


@pytest.fixture
async def auth(make_dpop_auth: MakeDpopAuth) -> Auth:
    return await make_dpop_auth()


def proof_for(auth: Auth, method: str, path: str, *, name: str = "ec256", token: str | None = None,
              **changes: Any) -> str:
    """A fresh proof by key ``name`` for ``method`` on this app's ``path`` (with ``ath`` for ``token``)."""
    claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method,
                              "htu": str(auth.client.make_url(path)), "iat": int(time.time())}
    if token is not None:
        claims["ath"] = ath(token)
    claims.update(changes)
    return sign(good_header(name), claims, key(name), "ES256")


def jkt_of(name: str) -> str:
    return thumbprint(public_jwk(key(name)))


async def bound_login(auth: Auth, name: str = "ec256") -> dict[str, Any]:
    resp = await auth.login(headers={"DPoP": proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/login", name=name)})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def refresh_with(auth: Auth, token: str, name: str | None) -> aiohttp.ClientResponse:
    headers = {} if name is None else {"DPoP": proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/refresh", name=name)}
    return await auth.refresh(token, headers=headers)


def dpop_headers(auth: Auth, token: str, path: str = "/api/orders", name: str = "ec256",
                 **changes: Any) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof_for(auth, "GET", path, name=name, token=token, **changes)}


def challenges(resp: aiohttp.ClientResponse) -> list[str]:
    return resp.headers.getall("WWW-Authenticate", [])


# --- login and refresh ----------------------------------------------------------------------------

async def test_login_with_a_proof_issues_tokens_bound_to_its_key(auth: Auth) -> None:
    body = await bound_login(auth)
    assert body["token_type"] == "DPoP"
    assert claims_of(body["access_token"])["cnf"] == {"jkt": jkt_of("ec256")}


async def test_login_without_a_proof_stays_bearer(auth: Auth) -> None:
    body = await auth.session()
    assert body["token_type"] == "Bearer" and "cnf" not in claims_of(body["access_token"])


@pytest.mark.parametrize("changes", [{"htm": "GET"}, {"htu": "https://elsewhere.test/auth/login"},
                                     {"iat": 1_000_000_000}, {"ath": "x" * 43}])
async def test_login_with_a_bad_proof_gets_400_invalid_dpop_proof(auth: Auth, changes: dict[str, Any]) -> None:
    resp = await auth.login(headers={"DPoP": proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/login", **changes)})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_dpop_proof"


async def test_login_with_two_dpop_headers_is_refused(auth: Auth) -> None:
    path = f"{auth.cfg.auth.prefix}/login"
    headers = [("DPoP", proof_for(auth, "POST", path)), ("DPoP", proof_for(auth, "POST", path))]
    resp = await auth.login(headers=headers)
    assert resp.status == 400 and await error_code(resp) == "invalid_dpop_proof"


async def test_a_login_proof_is_single_use(auth: Auth) -> None:
    proof = proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/login")
    assert (await auth.login(headers={"DPoP": proof})).status == 200
    again = await auth.login(headers={"DPoP": proof})
    assert again.status == 400 and await error_code(again) == "invalid_dpop_proof"


async def test_bound_refresh_token_refreshes_with_a_proof_by_its_key(auth: Auth) -> None:
    first = await bound_login(auth)
    resp = await refresh_with(auth, first["refresh_token"], "ec256")
    assert resp.status == 200
    second = await resp.json()
    assert second["token_type"] == "DPoP" and claims_of(second["access_token"])["cnf"] == {"jkt": jkt_of("ec256")}


@pytest.mark.parametrize("name", [None, "ec256b"], ids=["no-proof", "other-key"])
async def test_bound_refresh_token_without_its_key_is_refused_and_not_consumed(auth: Auth, name: str | None) -> None:
    first = await bound_login(auth)
    refused = await refresh_with(auth, first["refresh_token"], name)
    assert refused.status == 400 and (await refused.json())["error"] == "invalid_dpop_proof"
    later = await refresh_with(auth, first["refresh_token"], "ec256")   # still live: no reuse alarm either
    assert later.status == 200 and (await later.json())["token_type"] == "DPoP"


async def test_unbound_refresh_token_with_a_proof_becomes_bound(auth: Auth) -> None:
    first = await auth.session()
    resp = await refresh_with(auth, first["refresh_token"], "ec256")
    assert resp.status == 200 and (await resp.json())["token_type"] == "DPoP"


# --- proxied requests -----------------------------------------------------------------------------

async def test_bound_token_with_a_fresh_proof_reaches_the_upstream(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    for _ in range(2):   # the second request meets the verified-token cache: its proof is checked all the same
        resp = await auth.client.get("/api/orders?page=2", headers=dpop_headers(auth, token))
        assert resp.status == 200, await resp.text()
        received = {name.lower() for name, _ in (await resp.json())["headers"]}
        assert not received & {"authorization", "dpop"}   # the token and its spent proof stay here


async def test_a_replayed_proof_is_refused(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    headers = dpop_headers(auth, token)
    assert (await auth.client.get("/api/orders", headers=headers)).status == 200
    again = await auth.client.get("/api/orders", headers=headers)
    assert again.status == 401 and await error_code(again) == "invalid_dpop_proof"
    assert challenges(again)[0].startswith('DPoP error="invalid_dpop_proof", algs="ES256 ES384 EdDSA RS256 PS256"')
    assert any(c.startswith("Bearer ") for c in challenges(again))


@pytest.mark.parametrize("case", ["no-proof", "other-key", "wrong-htm", "wrong-htu", "wrong-ath", "stale", "no-ath"])
async def test_bound_token_with_a_bad_proof_gets_401_invalid_dpop_proof(auth: Auth, case: str) -> None:
    token = (await bound_login(auth))["access_token"]
    headers = dpop_headers(auth, token, **{
        "other-key": {"name": "ec256b"}, "wrong-htm": {"htm": "POST"}, "wrong-htu": {"path": "/api/other"},
        "wrong-ath": {"ath": ath(token + "x")}, "stale": {"iat": int(time.time()) - 120}}.get(case, {}))
    if case == "no-proof":
        del headers["DPoP"]
    if case == "no-ath":
        headers["DPoP"] = proof_for(auth, "GET", "/api/orders")
    resp = await auth.client.get("/api/orders", headers=headers)
    assert resp.status == 401 and await error_code(resp) == "invalid_dpop_proof"
    assert challenges(resp)[0].startswith('DPoP error="invalid_dpop_proof"')


async def test_bound_token_as_bearer_gets_401_invalid_token(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    proof = proof_for(auth, "GET", "/api/orders", token=token)
    resp = await auth.client.get("/api/orders", headers={**bearer(token), "DPoP": proof})
    assert resp.status == 401 and await error_code(resp) == "invalid_token"
    assert any(c.startswith('DPoP error="invalid_token"') for c in challenges(resp))
    assert any(c.startswith('Bearer realm="tokengate", error="invalid_token"') for c in challenges(resp))


async def test_unbound_token_as_dpop_gets_401_invalid_token(auth: Auth) -> None:
    token = (await auth.session())["access_token"]
    resp = await auth.client.get("/api/orders", headers=dpop_headers(auth, token))
    assert resp.status == 401 and await error_code(resp) == "invalid_token"


async def test_unbound_token_passes_where_dpop_is_not_required(auth: Auth) -> None:
    token = (await auth.session())["access_token"]
    assert (await auth.client.get("/api/orders", headers=bearer(token))).status == 200


async def test_route_requiring_dpop_refuses_unbound_and_takes_bound_tokens(auth: Auth) -> None:
    unbound = (await auth.session())["access_token"]
    refused = await auth.client.get("/api/bound", headers=bearer(unbound))
    assert refused.status == 401 and await error_code(refused) == "invalid_token"
    bound = (await bound_login(auth))["access_token"]
    assert (await auth.client.get("/api/bound", headers=dpop_headers(auth, bound, "/api/bound"))).status == 200


async def test_dpop_required_everywhere_refuses_unbound_tokens(make_dpop_auth: MakeDpopAuth) -> None:
    auth = await make_dpop_auth(required=True)
    unbound = (await auth.session())["access_token"]
    refused = await auth.client.get("/api/orders", headers=bearer(unbound))
    assert refused.status == 401 and await error_code(refused) == "invalid_token"
    bound = (await bound_login(auth))["access_token"]
    assert (await auth.client.get("/api/orders", headers=dpop_headers(auth, bound))).status == 200


async def test_missing_token_gets_both_challenges(auth: Auth) -> None:
    resp = await auth.client.get("/api/orders")
    assert resp.status == 401 and await error_code(resp) == "missing_token"
    assert challenges(resp) == ['Bearer realm="tokengate"', 'DPoP algs="ES256 ES384 EdDSA RS256 PS256"']


async def test_openapi_documents_the_dpop_header_and_token_type(auth: Auth) -> None:
    document = await (await auth.client.get(f"{auth.cfg.auth.prefix}/openapi.json")).json()
    for endpoint in ("login", "refresh"):
        operation = document["paths"][f"{auth.cfg.auth.prefix}/{endpoint}"]["post"]
        assert "DPoP" in {p["name"] for p in operation["parameters"]}
        assert "invalid_dpop_proof" in operation["responses"]["400"]["content"]["application/json"]["schema"][
            "allOf"][1]["properties"]["code"]["enum"]
    assert "DPoP" in document["components"]["schemas"]["TokenResponse"]["properties"]["token_type"]["enum"]


async def test_algorithms_not_allowed_are_refused(make_dpop_auth: MakeDpopAuth) -> None:
    auth = await make_dpop_auth(algorithms=["EdDSA"])
    resp = await auth.login(headers={"DPoP": proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/login")})
    assert resp.status == 400 and await error_code(resp) == "invalid_dpop_proof"


async def test_token_and_proof_are_never_logged(auth: Auth, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = await bound_login(auth)
    token = body["access_token"]
    headers = dpop_headers(auth, token)
    await auth.client.get("/api/orders", headers=headers)
    await auth.client.get("/api/orders", headers=headers)   # refused: replayed
    await auth.client.get("/api/orders", headers=bearer(token))   # refused: bound
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert token not in text and headers["DPoP"] not in text and body["refresh_token"] not in text


# --- the gateway's own endpoints --------------------------------------------------------------------

async def test_a_bound_token_as_bearer_is_refused_at_the_gateways_own_endpoints(auth: Auth) -> None:
    # A copy of a bound token must not end its owner's sessions or pass forward-auth without the key.
    token = (await bound_login(auth))["access_token"]
    prefix = auth.cfg.auth.prefix
    for method, path in (("POST", "logout"), ("POST", "logout-all"), ("GET", "sessions"), ("GET", "verify")):
        resp = await auth.client.request(method, f"{prefix}/{path}",
                                         headers={**bearer(token), "X-Forwarded-Uri": "/api/orders"})
        assert resp.status == 401 and await error_code(resp) == "invalid_token", path


async def test_a_bound_token_with_its_proof_logs_out(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    path = f"{auth.cfg.auth.prefix}/logout"
    proof = proof_for(auth, "POST", path, token=token)
    resp = await auth.client.post(path, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status == 204
    after = await auth.client.get("/api/orders", headers=dpop_headers(auth, token))
    assert after.status == 401


# --- server nonces (tokens.dpop.nonce: true) ------------------------------------------------------

@pytest.fixture
async def nonce_auth(make_dpop_auth: MakeDpopAuth) -> Auth:
    return await make_dpop_auth(nonce=True)


def login_proof(auth: Auth, **changes: Any) -> str:
    return proof_for(auth, "POST", f"{auth.cfg.auth.prefix}/login", **changes)


async def nonce_from_a_refusal(auth: Auth) -> str:
    resp = await auth.login(headers={"DPoP": login_proof(auth)})
    assert resp.status == 400 and await error_code(resp) == "use_dpop_nonce"
    return resp.headers["DPoP-Nonce"]


async def test_login_without_a_nonce_gets_400_use_dpop_nonce_and_one_to_use(nonce_auth: Auth) -> None:
    resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth)})
    assert resp.status == 400 and (await resp.json())["error"] == "use_dpop_nonce"
    nonce = resp.headers["DPoP-Nonce"]
    again = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})
    assert again.status == 200, await again.text()
    body = await again.json()
    assert body["token_type"] == "DPoP" and claims_of(body["access_token"])["cnf"] == {"jkt": jkt_of("ec256")}


async def test_refresh_needs_a_nonce_too(nonce_auth: Auth) -> None:
    nonce = await nonce_from_a_refusal(nonce_auth)
    resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})
    refresh_token = (await resp.json())["refresh_token"]
    path = f"{nonce_auth.cfg.auth.prefix}/refresh"
    refused = await nonce_auth.refresh(refresh_token, headers={"DPoP": proof_for(nonce_auth, "POST", path)})
    assert refused.status == 400 and await error_code(refused) == "use_dpop_nonce" and refused.headers["DPoP-Nonce"]
    fresh = refused.headers["DPoP-Nonce"]
    ok = await nonce_auth.refresh(refresh_token, headers={"DPoP": proof_for(nonce_auth, "POST", path, nonce=fresh)})
    assert ok.status == 200, await ok.text()


@pytest.mark.parametrize("forged", ["0.AAAAAAAAAAAAAAAAAAAAAA", "not-a-nonce", ""])
async def test_a_forged_nonce_is_refused(nonce_auth: Auth, forged: str) -> None:
    real = await nonce_from_a_refusal(nonce_auth)
    slot = real.partition(".")[0]
    for nonce in (forged, f"{slot}.AAAAAAAAAAAAAAAAAAAAAA", real + "x"):
        resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})
        assert resp.status == 400 and await error_code(resp) == "use_dpop_nonce", nonce
        assert nonce_auth.gw.dpop.nonces.accepts(resp.headers["DPoP-Nonce"])   # type: ignore[union-attr]


async def test_a_nonce_from_two_slots_ago_is_refused(nonce_auth: Auth) -> None:
    maker = nonce_auth.gw.dpop.nonces
    assert maker is not None
    nonce = await nonce_from_a_refusal(nonce_auth)
    maker._clock = lambda: time.time() + SLOT_S   # the next slot: still accepted
    assert (await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})).status == 200
    maker._clock = lambda: time.time() + 2 * SLOT_S + 1   # two slots on: stale
    resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})
    assert resp.status == 400 and await error_code(resp) == "use_dpop_nonce"
    assert resp.headers["DPoP-Nonce"] != nonce


async def test_proxied_request_without_a_nonce_gets_401_use_dpop_nonce(nonce_auth: Auth) -> None:
    nonce = await nonce_from_a_refusal(nonce_auth)
    resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=nonce)})
    token = (await resp.json())["access_token"]
    refused = await nonce_auth.client.get("/api/orders", headers=dpop_headers(nonce_auth, token))
    assert refused.status == 401 and await error_code(refused) == "use_dpop_nonce"
    assert challenges(refused)[0].startswith('DPoP error="use_dpop_nonce", algs="ES256 ES384 EdDSA RS256 PS256"')
    assert any(c.startswith("Bearer ") for c in challenges(refused))
    fresh = refused.headers["DPoP-Nonce"]
    ok = await nonce_auth.client.get("/api/orders", headers=dpop_headers(nonce_auth, token, nonce=fresh))
    assert ok.status == 200, await ok.text()


async def test_a_proof_with_the_previous_slots_nonce_gets_the_current_one_on_its_success_answer(
        nonce_auth: Auth) -> None:
    """RFC 9449 8.2: a nonce of the previous slot is good for one more slot at most, so every success
    answer to a proof that carried one (login, refresh, a proxied answer whole or streamed) hands out the
    current nonce; a proof with the current nonce gets none (nothing to renew)."""
    maker = nonce_auth.gw.dpop.nonces
    assert maker is not None
    old = await nonce_from_a_refusal(nonce_auth)
    resp = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=old)})
    assert resp.status == 200 and "DPoP-Nonce" not in resp.headers   # current: nothing to renew
    body = await resp.json()
    token = body["access_token"]
    ok = await nonce_auth.client.get("/api/orders", headers=dpop_headers(nonce_auth, token, nonce=old))
    assert ok.status == 200 and "DPoP-Nonce" not in ok.headers

    maker._clock = lambda: time.time() + SLOT_S   # the next slot: the old nonce is still good, but aging
    current = maker.fresh()
    assert current != old
    login = await nonce_auth.login(headers={"DPoP": login_proof(nonce_auth, nonce=old)})
    assert login.status == 200 and login.headers["DPoP-Nonce"] == current
    path = f"{nonce_auth.cfg.auth.prefix}/refresh"
    refreshed = await nonce_auth.refresh(body["refresh_token"],
                                         headers={"DPoP": proof_for(nonce_auth, "POST", path, nonce=old)})
    assert refreshed.status == 200 and refreshed.headers["DPoP-Nonce"] == current
    for target in ("/api/orders", "/_echo/stream"):   # relayed whole, and streamed
        answer = await nonce_auth.client.get(target, headers=dpop_headers(nonce_auth, token, target, nonce=old))
        assert answer.status == 200 and answer.headers["DPoP-Nonce"] == current, target
        await answer.read()
    again = await nonce_auth.client.get("/api/orders", headers=dpop_headers(nonce_auth, token, nonce=current))
    assert again.status == 200 and "DPoP-Nonce" not in again.headers


async def test_without_nonces_no_nonce_is_asked_for_or_handed_out(auth: Auth) -> None:
    resp = await auth.login(headers={"DPoP": login_proof(auth)})
    assert resp.status == 200 and "DPoP-Nonce" not in resp.headers
