"""GET /auth/verify (forward-auth) with DPoP-bound tokens (RFC 9449) over real sockets: the proof must
name the request the proxy asks about (X-Original-*/X-Forwarded-Method and -URI, at X-Forwarded-Proto/
-Host or auth.public_url), never the verify request itself, and only a proxy in listen.trusted_proxies
is believed about that request. Every other DPoP rule of a proxied request holds as it is."""

from __future__ import annotations

import secrets
import time
from typing import Any

import aiohttp
import pytest

from gateway.steps.dpop_nonce import SLOT_S
from tests.conftest import bearer
from tests.integration.auth import test_dpop_routes as dpop_routes
from tests.integration.auth.test_auth_routes import Auth, error_code
from tests.integration.auth.test_dpop_routes import MakeDpopAuth, bound_login, challenges, login_proof
from tests.unit.steps.dpop_proofs import ath, good_header, key, sign

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
backend, store_url, make_dpop_auth = dpop_routes.backend, dpop_routes.store_url, dpop_routes.make_dpop_auth

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}   # the test client is the proxy
ORIGIN = "https://app.example.test"               # where the client sent its request, as the proxy says
URI = "/api/orders/7?page=2"
ALGS = 'algs="ES256 ES384 EdDSA RS256 PS256"'


@pytest.fixture
async def auth(make_dpop_auth: MakeDpopAuth) -> Auth:
    return await make_dpop_auth(listen=TRUSTED)


def proof(token: str | None, htm: str = "GET", htu: str = ORIGIN + "/api/orders/7", name: str = "ec256",
          **changes: Any) -> str:
    claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time())}
    if token is not None:
        claims["ath"] = ath(token)
    claims.update(changes)
    return sign(good_header(name), claims, key(name), "ES256")


def asked(method: str = "GET", uri: str = URI, origin: str = ORIGIN) -> dict[str, str]:
    """What nginx's auth_request location of README.md adds to the subrequest."""
    scheme, _, host = origin.partition("://")
    return {"X-Original-Method": method, "X-Original-URI": uri, "X-Forwarded-Proto": scheme,
            "X-Forwarded-Host": host}


def bound(token: str, dpop_proof: str | None) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", **({"DPoP": dpop_proof} if dpop_proof is not None else {})}


async def verify(auth: Auth, headers: dict[str, str]) -> aiohttp.ClientResponse:
    return await auth.client.get(f"{auth.cfg.auth.prefix}/verify", headers=headers)


async def assert_refused(resp: aiohttp.ClientResponse, code: str) -> None:
    """401 ``code``, with the DPoP challenge a proxied request's refusal carries (first for a bad proof)."""
    assert resp.status == 401 and await error_code(resp) == code
    assert "X-User-Id" not in resp.headers
    dpop = [c for c in challenges(resp) if c.startswith("DPoP ")]
    assert len(dpop) == 1 and dpop[0].startswith(f'DPoP error="{code}", {ALGS}'), challenges(resp)
    if code != "invalid_token":
        assert challenges(resp)[0] == dpop[0]


async def test_a_proof_for_the_original_request_passes_with_the_identity_headers(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    for _ in range(2):   # the second meets the verified-token cache: its proof is checked all the same
        resp = await verify(auth, {**bound(token, proof(token)), **asked()})
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-User-Id"] == "alice" and resp.headers["X-User-Roles"] == "user"


async def test_the_original_method_is_the_htm_whatever_the_subrequest_uses(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    headers = {**bound(token, proof(token, "DELETE")), "X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": URI,
               "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.test"}   # Traefik's names
    resp = await verify(auth, headers)
    assert resp.status == 200, await resp.text()


async def test_a_proof_for_the_verify_url_itself_is_refused(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    for htu in (f"{ORIGIN}/auth/verify", str(auth.client.make_url("/auth/verify"))):
        resp = await verify(auth, {**bound(token, proof(token, htu=htu)), **asked()})
        await assert_refused(resp, "invalid_dpop_proof")


@pytest.mark.parametrize("case", ["wrong-htm", "other-path", "other-host", "no-ath", "wrong-ath", "other-key",
                                  "stale", "no-proof"])
async def test_a_bad_proof_is_refused_with_the_dpop_challenge(auth: Auth, case: str) -> None:
    token = (await bound_login(auth))["access_token"]
    good = await verify(auth, {**bound(token, proof(token)), **asked()})
    assert good.status == 200
    bad = {"wrong-htm": lambda: proof(token, "POST"),
           "other-path": lambda: proof(token, htu=ORIGIN + "/api/orders/8"),
           "other-host": lambda: proof(token, htu="https://elsewhere.example.test/api/orders/7"),
           "no-ath": lambda: proof(None),
           "wrong-ath": lambda: proof(token, ath=ath(token + "x")),
           "other-key": lambda: proof(token, name="ec256b"),
           "stale": lambda: proof(token, iat=int(time.time()) - 120),
           "no-proof": lambda: None}[case]()
    await assert_refused(await verify(auth, {**bound(token, bad), **asked()}), "invalid_dpop_proof")


async def test_a_replayed_proof_is_refused(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    headers = {**bound(token, proof(token)), **asked()}
    assert (await verify(auth, headers)).status == 200
    await assert_refused(await verify(auth, headers), "invalid_dpop_proof")
    other_uri = {**headers, **asked(uri="/api/orders/7")}   # the same proof for the same URL, no query: still spent
    await assert_refused(await verify(auth, other_uri), "invalid_dpop_proof")


async def test_a_bound_token_as_bearer_is_refused(auth: Auth) -> None:
    token = (await bound_login(auth))["access_token"]
    resp = await verify(auth, {**bearer(token), "DPoP": proof(token), **asked()})
    await assert_refused(resp, "invalid_token")
    assert any(c.startswith('Bearer realm="tokengate", error="invalid_token"') for c in challenges(resp))


async def test_an_unbound_token_as_dpop_is_refused(auth: Auth) -> None:
    token = (await auth.session())["access_token"]
    await assert_refused(await verify(auth, {**bound(token, proof(token)), **asked()}), "invalid_token")


async def test_a_route_requiring_dpop_refuses_unbound_and_takes_bound_tokens(auth: Auth) -> None:
    unbound = (await auth.session())["access_token"]
    await assert_refused(await verify(auth, {**bearer(unbound), **asked(uri="/api/bound/x")}), "invalid_token")
    token = (await bound_login(auth))["access_token"]
    resp = await verify(auth, {**bound(token, proof(token, htu=ORIGIN + "/api/bound/x")), **asked(uri="/api/bound/x")})
    assert resp.status == 200, await resp.text()


async def test_dpop_required_everywhere_refuses_unbound_tokens(make_dpop_auth: MakeDpopAuth) -> None:
    auth = await make_dpop_auth(listen=TRUSTED, required=True)
    unbound = (await auth.session())["access_token"]
    await assert_refused(await verify(auth, {**bearer(unbound), **asked()}), "invalid_token")
    token = (await bound_login(auth))["access_token"]
    assert (await verify(auth, {**bound(token, proof(token)), **asked()})).status == 200


async def test_public_url_names_the_origin_not_the_forwarded_host(make_dpop_auth: MakeDpopAuth) -> None:
    auth = await make_dpop_auth(listen=TRUSTED, auth={"public_url": "https://api.example.test"})
    login = await auth.login(headers={"DPoP": proof(None, "POST", "https://api.example.test/auth/login")})
    token = (await login.json())["access_token"]   # public_url: the login proof names it too
    forwarded = {**asked(), "X-Forwarded-Host": "other.example.test"}
    ok = await verify(auth, {**bound(token, proof(token, htu="https://api.example.test/api/orders/7")), **forwarded})
    assert ok.status == 200, await ok.text()
    wrong = proof(token, htu="https://other.example.test/api/orders/7")
    await assert_refused(await verify(auth, {**bound(token, wrong), **forwarded}), "invalid_dpop_proof")


async def test_a_missing_nonce_gets_401_use_dpop_nonce_and_one_to_use(make_dpop_auth: MakeDpopAuth) -> None:
    auth = await make_dpop_auth(listen=TRUSTED, nonce=True)
    first = await auth.login(headers={"DPoP": login_proof(auth)})
    nonce = first.headers["DPoP-Nonce"]
    token = (await (await auth.login(headers={"DPoP": login_proof(auth, nonce=nonce)})).json())["access_token"]
    refused = await verify(auth, {**bound(token, proof(token)), **asked()})
    await assert_refused(refused, "use_dpop_nonce")
    fresh = refused.headers["DPoP-Nonce"]
    ok = await verify(auth, {**bound(token, proof(token, nonce=fresh)), **asked()})
    assert ok.status == 200, await ok.text()
    assert "DPoP-Nonce" not in ok.headers   # the current nonce: nothing to renew
    maker = auth.gw.dpop.nonces
    assert maker is not None
    maker._clock = lambda: time.time() + SLOT_S   # the next slot: that nonce is aging
    renewed = await verify(auth, {**bound(token, proof(token, nonce=fresh)), **asked()})
    assert renewed.status == 200 and renewed.headers["DPoP-Nonce"] == maker.fresh() != fresh


# --- a peer outside listen.trusted_proxies --------------------------------------------------------
# Its word on the original request is not believed, so no proof can be held to that request: a bound
# token is refused there, whatever URL its proof names (fail closed). Unbound tokens are judged as before.

@pytest.fixture
async def untrusted(make_dpop_auth: MakeDpopAuth) -> Auth:
    return await make_dpop_auth()


async def test_an_untrusted_peer_gets_a_bound_token_refused(untrusted: Auth) -> None:
    token = (await bound_login(untrusted))["access_token"]
    own_url = str(untrusted.client.make_url("/auth/verify"))
    for dpop_proof in (proof(token), proof(token, htu=str(untrusted.client.make_url("/api/orders/7"))),
                       proof(token, htu=own_url)):
        await assert_refused(await verify(untrusted, {**bound(token, dpop_proof), **asked()}), "invalid_dpop_proof")


async def test_an_untrusted_peer_still_gets_unbound_tokens_judged(untrusted: Auth) -> None:
    token = (await untrusted.session())["access_token"]
    resp = await verify(untrusted, {**bearer(token), **asked()})
    assert resp.status == 200 and resp.headers["X-User-Id"] == "alice"
    await assert_refused(await verify(untrusted, {**bearer(token), **asked(uri="/api/bound")}), "invalid_token")
