"""The test OP works without tokengate: discovery, the code flow with PKCE driven over plain HTTP, the
token endpoint's client authentication, ID tokens that verify against its JWKS, logout, key rotation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import unused_port
from yarl import URL

from .opdriver import (ACCOUNTS, CLIENT_ID, POST_CLIENT_ID, PUBLIC_CLIENT_ID, AuthRequest, OpenIdProvider, OpPageError,
                       auth_request, sign_in_at_op, sign_out_at_op)

pytestmark = pytest.mark.integration

UserAgent = Callable[..., aiohttp.ClientSession]
CLAIMS = ("email", "email_verified", "name", "groups")


@pytest.fixture
async def callback(oidc_op: OpenIdProvider) -> str:
    """A redirect URI registered at the OP, and ``.../bye`` beside it for after logout (nothing listens
    there: the driver never follows a redirect off the OP)."""
    origin = f"http://127.0.0.1:{unused_port()}"
    await oidc_op.allow_redirect_uris([f"{origin}/auth/oauth/corp/callback"], [f"{origin}/bye"])
    return f"{origin}/auth/oauth/corp/callback"


async def redeem(http: aiohttp.ClientSession, op: OpenIdProvider, request: AuthRequest, code: str, *,
                 client_id: str = CLIENT_ID, secret_in: str = "header",
                 verifier: str | None = None) -> tuple[int, Any]:
    """POST the code to the token endpoint, the secret in the Authorization header, the body or nowhere;
    the status and the JSON answer."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": request.redirect_uri,
            "code_verifier": verifier or request.code_verifier}
    headers = {}
    if secret_in == "header":   # RFC 6749 2.3.1: each part form-urlencoded, then Basic
        pair = f"{quote(client_id, safe='')}:{quote(op.client_secret, safe='')}"
        headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
    elif secret_in == "body":
        form |= {"client_id": client_id, "client_secret": op.client_secret}
    else:
        form |= {"client_id": client_id}
    async with http.post(op.url("/token"), data=form, headers=headers) as resp:
        return resp.status, await resp.json()


async def sign_in_and_redeem(http: aiohttp.ClientSession, op: OpenIdProvider, callback: str, account: str,
                             *, client_id: str = CLIENT_ID) -> dict[str, Any]:
    request = auth_request(op, callback, client_id=client_id)
    back = await sign_in_at_op(http, request.url, account)
    status, tokens = await redeem(http, op, request, back.query["code"], client_id=client_id)
    assert status == 200, tokens
    return dict(tokens)


async def id_token_claims(http: aiohttp.ClientSession, op: OpenIdProvider, id_token: str,
                          audience: str = CLIENT_ID) -> dict[str, Any]:
    """The ID token's claims, its signature checked by PyJWT with the OP's JWKS (key chosen by kid)."""
    async with http.get((await op.discovery())["jwks_uri"]) as resp:
        jwks = jwt.PyJWKSet.from_dict(await resp.json())
    key = next(k for k in jwks.keys if k.key_id == jwt.get_unverified_header(id_token)["kid"])
    return dict(jwt.decode(id_token, key, algorithms=["RS256"], audience=audience, issuer=op.issuer))


async def test_discovery_names_the_endpoints_s256_and_the_iss_parameter(oidc_op: OpenIdProvider) -> None:
    doc = await oidc_op.discovery()
    assert doc["issuer"] == oidc_op.issuer == f"http://127.0.0.1:{oidc_op.port}"
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        assert doc[endpoint].startswith(f"{oidc_op.issuer}/")
    assert "S256" in doc["code_challenge_methods_supported"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert {"openid", "email", "profile", "groups"} <= set(doc["scopes_supported"])
    assert {"email", "email_verified", "groups", "name"} <= set(doc["claims_supported"])


@pytest.mark.parametrize("account", [*sorted(ACCOUNTS), "zed"])   # zed: a name the OP has no claims for
async def test_code_flow_with_pkce_gives_an_id_token_with_the_accounts_claims(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent, account: str) -> None:
    http = make_user_agent()
    request = auth_request(oidc_op, callback)
    back = await sign_in_at_op(http, request.url, account)
    assert str(back.with_query(None)) == callback
    assert back.query["state"] == request.state
    assert back.query["iss"] == oidc_op.issuer   # RFC 9207
    status, tokens = await redeem(http, oidc_op, request, back.query["code"])
    assert status == 200, tokens
    claims = await id_token_claims(http, oidc_op, tokens["id_token"])
    assert (claims["sub"], claims["nonce"]) == (account, request.nonce)
    assert {k: claims.get(k) for k in CLAIMS} == {k: ACCOUNTS.get(account, {}).get(k) for k in CLAIMS}


async def test_a_code_is_redeemed_once_and_only_with_its_verifier(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    http = make_user_agent()
    request = auth_request(oidc_op, callback)
    code = (await sign_in_at_op(http, request.url, "alice")).query["code"]
    status, answer = await redeem(http, oidc_op, request, code, verifier="x" * 43)
    assert (status, answer["error"]) == (400, "invalid_grant")
    status, answer = await redeem(http, oidc_op, request, code)
    assert status == 200, answer   # the attempt with a wrong verifier left the code usable
    status, answer = await redeem(http, oidc_op, request, code)
    assert (status, answer["error"]) == (400, "invalid_grant")


async def test_an_authorization_request_without_pkce_is_refused(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    request = auth_request(oidc_op, callback)
    url = request.url.without_query_params("code_challenge", "code_challenge_method")
    back = await sign_in_at_op(make_user_agent(), url, "alice")   # the redirect_uri is registered: the error goes there
    assert (back.query["error"], back.query["state"]) == ("invalid_request", request.state)


async def test_an_unregistered_redirect_uri_is_refused_on_the_ops_own_page(
        oidc_op: OpenIdProvider, make_user_agent: UserAgent) -> None:
    request = auth_request(oidc_op, f"http://127.0.0.1:{unused_port()}/auth/oauth/corp/callback")
    with pytest.raises(OpPageError) as refused:
        await sign_in_at_op(make_user_agent(), request.url, "alice")
    assert (refused.value.status, refused.value.error) == (400, "invalid_redirect_uri")


@pytest.mark.parametrize(("client_id", "secret_in", "wrong_way"), [
    (CLIENT_ID, "header", "body"), (POST_CLIENT_ID, "body", "header"), (PUBLIC_CLIENT_ID, "nowhere", "header")])
async def test_each_client_redeems_only_by_its_registered_authentication_method(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent,
        client_id: str, secret_in: str, wrong_way: str) -> None:
    http = make_user_agent()
    request = auth_request(oidc_op, callback, client_id=client_id)
    code = (await sign_in_at_op(http, request.url, "carol")).query["code"]
    status, answer = await redeem(http, oidc_op, request, code, client_id=client_id, secret_in=wrong_way)
    assert (status, answer["error"]) == (401, "invalid_client")
    status, answer = await redeem(http, oidc_op, request, code, client_id=client_id, secret_in=secret_in)
    assert status == 200, answer   # the refused attempt left the code usable
    assert (await id_token_claims(http, oidc_op, answer["id_token"], client_id))["sub"] == "carol"


async def test_a_second_sign_in_uses_the_ops_session_and_cancel_answers_access_denied(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    http = make_user_agent()
    await sign_in_and_redeem(http, oidc_op, callback, "alice")
    tokens = await sign_in_and_redeem(http, oidc_op, callback, "bob")   # no login page: bob is never typed
    assert (await id_token_claims(http, oidc_op, tokens["id_token"]))["sub"] == "alice"
    request = auth_request(oidc_op, callback)
    denied = await sign_in_at_op(make_user_agent(), request.url, "alice", cancel=True)
    assert (denied.query["error"], denied.query["state"]) == ("access_denied", request.state)


async def test_rp_initiated_logout_returns_to_the_post_logout_uri_and_ends_the_ops_session(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    http = make_user_agent()
    tokens = await sign_in_and_redeem(http, oidc_op, callback, "alice")
    bye = str(URL(callback).with_path("/bye"))
    end = URL((await oidc_op.discovery())["end_session_endpoint"]).with_query(
        id_token_hint=tokens["id_token"], client_id=CLIENT_ID, post_logout_redirect_uri=bye, state="s1")
    back = await sign_out_at_op(http, end)
    assert (str(back.with_query(None)), back.query["state"]) == (bye, "s1")
    tokens = await sign_in_and_redeem(http, oidc_op, callback, "bob")   # signed out: the login page again
    assert (await id_token_claims(http, oidc_op, tokens["id_token"]))["sub"] == "bob"


async def test_rotating_the_keys_changes_the_kid_of_new_id_tokens(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    http = make_user_agent()

    async def new_id_token() -> str:
        return str((await sign_in_and_redeem(http, oidc_op, callback, "alice"))["id_token"])

    async def published() -> list[str]:
        async with http.get(oidc_op.url("/jwks")) as resp:
            return [key["kid"] for key in (await resp.json())["keys"]]

    old_token = await new_id_token()
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    kid = await oidc_op.rotate_keys()
    token = await new_id_token()
    assert jwt.get_unverified_header(token)["kid"] == kid != old_kid
    assert (await published())[:2] == [kid, old_kid]   # the old key stays published (verification only)
    assert (await id_token_claims(http, oidc_op, old_token))["sub"] == "alice"
    assert (await id_token_claims(http, oidc_op, token))["sub"] == "alice"
    retired_all_but = await oidc_op.rotate_keys(retire=True)
    assert await published() == [retired_all_but]
    assert jwt.get_unverified_header(await new_id_token())["kid"] == retired_all_but


async def test_an_account_set_by_a_test_signs_in_with_its_claims(
        oidc_op: OpenIdProvider, callback: str, make_user_agent: UserAgent) -> None:
    await oidc_op.set_account("erin", {"email": "Alice@Example.TEST", "email_verified": True, "groups": ["x"]})
    http = make_user_agent()
    tokens = await sign_in_and_redeem(http, oidc_op, callback, "erin")
    claims = await id_token_claims(http, oidc_op, tokens["id_token"])
    assert (claims["sub"], claims["email"], claims["groups"]) == ("erin", "Alice@Example.TEST", ["x"])


async def test_an_op_of_a_tests_own_takes_its_redirect_uris_auth_method_and_accounts(
        start_oidc_op: Callable[..., Any], make_user_agent: UserAgent) -> None:
    callback = f"http://127.0.0.1:{unused_port()}/auth/oauth/corp/callback"
    op = await start_oidc_op(redirect_uris=[callback], auth_method="client_secret_post",
                             accounts={"frank": {"email": "frank@example.test", "email_verified": True}})
    http = make_user_agent()
    request = auth_request(op, callback)
    code = (await sign_in_at_op(http, request.url, "frank")).query["code"]
    status, answer = await redeem(http, op, request, code, secret_in="header")
    assert (status, answer["error"]) == (401, "invalid_client")
    status, tokens = await redeem(http, op, request, code, secret_in="body")
    assert status == 200, tokens
    claims = await id_token_claims(http, op, tokens["id_token"])
    assert (claims["sub"], claims["email"], claims["email_verified"]) == ("frank", "frank@example.test", True)
