"""Minter: access tokens and upstream assertions, checked by the Verifier and by plain PyJWT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.errors import InvalidToken, NoSigningKey
from gateway.steps.identity import Identity
from gateway.steps.tokens import ACCESS_TOKEN_TYP, ASSERTION_TYP, Minter
from gateway.steps.verify import Verifier
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER

NOW = 1_700_000_000.5


@pytest.fixture
def config(make_config: Callable[..., Any]) -> Any:
    return make_config()


@pytest.fixture
def minter(config: Any) -> Minter:
    return Minter(config.tokens, config.identity)


def decode(token: str, audience: str = AUDIENCE, **options: Any) -> dict[str, Any]:
    return jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience=audience, issuer=ISSUER, **options)


def decode_assertion(token: str, private_keys: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Assertions are signed with the asymmetric key (rsa1 in base_config): verify with its public half."""
    return jwt.decode(token, private_keys["rsa"].public_key(), algorithms=["RS256"], audience="accounts",
                      issuer=ISSUER, **options)


def alice(**claims: Any) -> Identity:
    return Identity(sub="alice", roles=frozenset({"user", "admin"}), jti="j1", iss=ISSUER, exp=NOW + 60,
                    iat=NOW, claims={"sub": "alice", **claims})


async def test_access_token_is_accepted_by_the_verifier(config: Any, minter: Minter) -> None:
    identity = await Verifier(config.tokens, config.identity).verify(minter.mint_access_token("bob", ["admin"]))
    assert (identity.sub, identity.roles, identity.iss) == ("bob", frozenset({"admin"}), ISSUER)


def test_access_token_carries_the_registered_claims(config: Any) -> None:
    minter = Minter(config.tokens, config.identity, clock=lambda: NOW)
    token = minter.mint_access_token("bob", ["user", "admin", "user"], ttl_s=120)
    claims = decode(token, options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE and claims["sub"] == "bob"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (int(NOW), int(NOW), int(NOW + 120))
    assert claims["roles"] == ["user", "admin"]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 22


def test_access_token_header_names_the_signing_key(minter: Minter) -> None:
    header = jwt.get_unverified_header(minter.mint_access_token("bob"))
    assert header == {"alg": "HS256", "kid": "main", "typ": ACCESS_TOKEN_TYP}


def test_default_ttl_is_the_configured_access_ttl(make_config: Callable[..., Any]) -> None:
    config = make_config(tokens={"access_ttl": "5m"})
    claims = decode(Minter(config.tokens, config.identity).mint_access_token("bob"))
    assert claims["exp"] - claims["iat"] == 300


def test_every_token_gets_its_own_jti(minter: Minter) -> None:
    assert len({decode(minter.mint_access_token("bob"))["jti"] for _ in range(50)}) == 50


def test_several_audiences_are_written_as_a_list(make_config: Callable[..., Any]) -> None:
    config = make_config(tokens={"audience": [AUDIENCE, "billing"]})
    claims = decode(Minter(config.tokens, config.identity).mint_access_token("bob"))
    assert claims["aud"] == [AUDIENCE, "billing"]


def test_roles_go_under_the_configured_roles_claim(make_config: Callable[..., Any]) -> None:
    config = make_config(identity={"roles_claim": "groups"})
    claims = decode(Minter(config.tokens, config.identity).mint_access_token("bob", ["ops"]))
    assert claims["groups"] == ["ops"] and "roles" not in claims


def test_extra_claims_are_added(minter: Minter) -> None:
    claims = decode(minter.mint_access_token("bob", extra_claims={"email": "b@example.test", "tier": 2}))
    assert (claims["email"], claims["tier"]) == ("b@example.test", 2)


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles"])
def test_extra_claims_cannot_override_registered_ones(minter: Minter, claim: str) -> None:
    with pytest.raises(ValueError):
        minter.mint_access_token("bob", extra_claims={claim: "forged"})


@pytest.mark.parametrize("kwargs", [{"sub": ""}, {"sub": 5}, {"sub": "bob", "roles": "admin"},
                                    {"sub": "bob", "roles": ["ok", 3]}, {"sub": "bob", "ttl_s": 0},
                                    {"sub": "bob", "extra_claims": {"x": float("nan")}}])
def test_bad_arguments_are_value_errors(minter: Minter, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        minter.mint_access_token(**kwargs)


@pytest.mark.parametrize("signer", ["rsa1", "ec1", "ed1"])
async def test_asymmetric_signer_tokens_verify(make_config: Callable[..., Any], signer: str) -> None:
    config = make_config(tokens={"signing_key": signer})
    token = Minter(config.tokens, config.identity).mint_access_token("bob")
    assert jwt.get_unverified_header(token)["kid"] == signer
    assert (await Verifier(config.tokens, config.identity).verify(token)).sub == "bob"


def test_verify_only_config_cannot_mint(make_config: Callable[..., Any], keys_dir: Path) -> None:
    keys = [{"kid": "partner", "alg": "ES256", "public_key_file": str(keys_dir / "ec256.pub.pem")}]
    config = make_config(tokens={"keys": keys, "signing_key": None})
    minter = Minter(config.tokens, config.identity)
    assert not minter.can_sign
    with pytest.raises(NoSigningKey):
        minter.mint_access_token("bob")
    with pytest.raises(NoSigningKey):
        minter.mint_assertion(alice(), "accounts")


# --- assertions -----------------------------------------------------------------------------------

def test_assertion_tells_the_upstream_who_the_caller_is(config: Any, private_keys: dict[str, Any]) -> None:
    token = Minter(config.tokens, config.identity, clock=lambda: NOW).mint_assertion(alice(email="a@x.test"),
                                                                                     "accounts")
    claims = decode_assertion(token, private_keys, options={"verify_exp": False, "verify_iat": False})
    assert claims["aud"] == "accounts" and claims["iss"] == ISSUER and claims["sub"] == "alice"
    assert claims["roles"] == ["admin", "user"] and claims["email"] == "a@x.test"
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW + 60))
    assert isinstance(claims["jti"], str) and claims["jti"] != "j1"


def test_assertion_is_signed_with_an_asymmetric_key_and_has_its_own_type(minter: Minter) -> None:
    header = jwt.get_unverified_header(minter.mint_assertion(alice(), "accounts"))
    assert header == {"alg": "RS256", "kid": "rsa1", "typ": ASSERTION_TYP}


def test_assertion_leaves_out_a_missing_or_odd_email(minter: Minter, private_keys: dict[str, Any]) -> None:
    for identity in (alice(), alice(email=["a@x.test"])):
        assert "email" not in decode_assertion(minter.mint_assertion(identity, "accounts"), private_keys)


async def test_assertion_is_refused_as_an_access_token(config: Any, minter: Minter) -> None:
    verifier = Verifier(config.tokens, config.identity)
    for audience in ("accounts", AUDIENCE):
        with pytest.raises(InvalidToken):
            await verifier.verify(minter.mint_assertion(alice(), audience))
