"""Verifier: every accepted shape, and one named case per attack or malformation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import get_default_algorithms

from gateway.errors import ExpiredToken, InvalidToken
from gateway.steps.identity import Identity
from gateway.steps.keys import KeySet, VerificationKey
from gateway.steps.tokens import Minter
from gateway.steps.verify import HEADER_MEMO_SIZE, MAX_TOKEN_CHARS, Verifier
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER

HS512_SECRET = "hs512-secret-" + "x" * 64
TRUSTED = "https://idp.example.test"


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 300,
            "jti": "jti-1", "roles": ["user"]}
    body.update(overrides)
    return body


def hs256_by_hand(header: dict[str, Any], payload: dict[str, Any] | str, secret: bytes) -> str:
    """HMAC-sign without PyJWT (which refuses PEM secrets), as an attacker would."""
    body = b64(payload) if isinstance(payload, str) else b64json(payload)
    signing_input = f"{b64json(header)}.{body}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


async def refused(verifier: Verifier, token: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    return info.value


def assert_not_echoed(exc: InvalidToken, token: str) -> None:
    """Neither the token, nor a segment of it, nor a header value shows up in what the client sees."""
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    secrets = [token, *(part for part in token.split(".") if part), *(str(v) for v in header.values())]
    for text in (exc.description, str(exc), repr(exc.args)):
        assert text and not any(secret in text for secret in secrets if len(secret) >= 4)


@pytest.fixture
def config(make_config: Callable[..., Any]) -> Any:
    return make_config()


@pytest.fixture
def verifier(config: Any) -> Verifier:
    return Verifier(config.tokens, config.identity)


# --- named bad tokens -----------------------------------------------------------------------------

@pytest.fixture
def expired_token(mint: Callable[..., str]) -> str:
    now = int(time.time())
    return mint(iat=now - 600, nbf=now - 600, exp=now - 120)


@pytest.fixture
def not_yet_valid_token(mint: Callable[..., str]) -> str:
    return mint(nbf=int(time.time()) + 120)


@pytest.fixture
def future_iat_token(mint: Callable[..., str]) -> str:
    return mint(iat=int(time.time()) + 120)


@pytest.fixture
def wrong_audience_token(mint: Callable[..., str]) -> str:
    return mint(aud="someone-else")


@pytest.fixture
def wrong_issuer_token(mint: Callable[..., str]) -> str:
    return mint(iss="https://evil.example.test")


@pytest.fixture
def unknown_kid_token(mint: Callable[..., str]) -> str:
    return mint(kid="nope", key=HS_SECRET, alg="HS256")


@pytest.fixture
def alg_none_token() -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims())}."


@pytest.fixture(params=["rsa1", None], ids=["kid_rsa1", "no_kid"])
def algorithm_confusion_token(request: pytest.FixtureRequest, private_keys: dict[str, Any]) -> str:
    """HS256 'signed' with our RSA public key PEM as the HMAC secret (the classic confusion attack)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": request.param} if request.param else {})}
    return hs256_by_hand(header, claims(), pem_public(private_keys["rsa"]))


@pytest.fixture(params=[("foreign_rsa", "RS256", "rsa1"), ("foreign_ec256", "ES256", "ec1")],
                ids=["foreign_rsa", "foreign_ec256"])
def foreign_key_token(request: pytest.FixtureRequest, mint: Callable[..., str], private_keys: dict[str, Any]) -> str:
    name, alg, kid = request.param
    return mint(kid=kid, key=private_keys[name], alg=alg)


@pytest.fixture(params=["jwk", "jku", "x5u", "x5c"])
def embedded_key_token(request: pytest.FixtureRequest, mint: Callable[..., str], private_keys: dict[str, Any]) -> str:
    """Signed by an attacker key that the header itself offers (or points to)."""
    attacker = private_keys["foreign_rsa"]
    offer = {
        "jwk": get_default_algorithms()["RS256"].to_jwk(attacker.public_key(), as_dict=True),
        "jku": "https://attacker.example.test/jwks.json",
        "x5u": "https://attacker.example.test/cert.pem",
        "x5c": ["MIIBattackercert"],
    }[request.param]
    return mint(kid="rsa1", key=attacker, alg="RS256", headers={request.param: offer})


# --- accepted -------------------------------------------------------------------------------------

async def test_valid_token_gives_identity_with_roles_and_claims(verifier: Verifier, mint: Callable[..., str]) -> None:
    now = int(time.time())
    identity = await verifier.verify(mint(sub="bob", roles=["user", "admin"], jti="j-42", iat=now, exp=now + 60))
    assert isinstance(identity, Identity)
    assert (identity.sub, identity.jti, identity.iss) == ("bob", "j-42", ISSUER)
    assert identity.roles == frozenset({"user", "admin"})
    assert (identity.exp, identity.iat) == (now + 60, now)
    assert identity.claims["aud"] == AUDIENCE and identity.claims["sub"] == "bob"


@pytest.mark.parametrize("roles, expected", [
    (["a", "b"], {"a", "b"}), ("a b  c", {"a", "b", "c"}), (None, set()), ([], set()),
])
async def test_roles_claim_is_a_list_or_a_space_separated_string(verifier: Verifier, mint: Callable[..., str],
                                                                 roles: Any, expected: set[str]) -> None:
    assert (await verifier.verify(mint(roles=roles))).roles == frozenset(expected)


async def test_roles_come_from_the_configured_roles_claim(make_config: Callable[..., Any],
                                                          mint: Callable[..., str]) -> None:
    config = make_config(identity={"roles_claim": "groups"})
    verifier = Verifier(config.tokens, config.identity)
    assert (await verifier.verify(mint(groups=["ops"], roles=["ignored"]))).roles == frozenset({"ops"})


async def test_audience_list_is_accepted_when_one_entry_matches(verifier: Verifier, mint: Callable[..., str]) -> None:
    assert (await verifier.verify(mint(aud=["other", AUDIENCE]))).sub == "alice"


async def test_optional_nbf_and_iat_may_be_absent(verifier: Verifier, mint: Callable[..., str]) -> None:
    identity = await verifier.verify(mint(nbf=None, iat=None))
    assert identity.iat is None


async def test_float_time_claims_are_numbers_too(verifier: Verifier, mint: Callable[..., str]) -> None:
    assert (await verifier.verify(mint(exp=time.time() + 60.5))).sub == "alice"


def every_alg_config(keys_dir: Path) -> dict[str, Any]:
    return {"keys": [
        {"kid": "hs256", "alg": "HS256", "secret": HS_SECRET},
        {"kid": "hs384", "alg": "HS384", "secret": HS_SECRET},
        {"kid": "hs512", "alg": "HS512", "secret": HS512_SECRET},
        {"kid": "rs256", "alg": "RS256", "private_key_file": str(keys_dir / "rsa.pem")},
        {"kid": "ps256", "alg": "PS256", "public_key_file": str(keys_dir / "rsa.pub.pem")},
        {"kid": "es256", "alg": "ES256", "private_key_file": str(keys_dir / "ec256.pem")},
        {"kid": "es384", "alg": "ES384", "public_key_file": str(keys_dir / "ec384.pub.pem")},
        {"kid": "eddsa", "alg": "EdDSA", "private_key_file": str(keys_dir / "ed.pem")},
    ], "signing_key": "hs256"}


SIGNERS = {"HS256": HS_SECRET, "HS384": HS_SECRET, "HS512": HS512_SECRET, "RS256": "rsa", "PS256": "rsa",
           "ES256": "ec256", "ES384": "ec384", "EdDSA": "ed"}


@pytest.mark.parametrize("alg", list(SIGNERS))
@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no_kid"])
async def test_every_supported_alg_is_accepted_with_its_own_key(
        make_config: Callable[..., Any], keys_dir: Path, mint: Callable[..., str],
        private_keys: dict[str, Any], alg: str, with_kid: bool) -> None:
    config = make_config(tokens=every_alg_config(keys_dir))
    verifier = Verifier(config.tokens, config.identity)
    key = SIGNERS[alg] if alg.startswith("HS") else private_keys[SIGNERS[alg]]
    token = mint(kid=alg.lower() if with_kid else None, key=key, alg=alg)
    assert (await verifier.verify(token)).sub == "alice"


@pytest.fixture(scope="module")
def impostor_keys(private_keys: dict[str, Any]) -> dict[str, Any]:
    """A key of the right type and size for each asymmetric alg, but not the configured one."""
    return {"RS256": private_keys["foreign_rsa"], "PS256": private_keys["foreign_rsa"],
            "ES256": private_keys["foreign_ec256"], "ES384": ec.generate_private_key(ec.SECP384R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate()}


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
async def test_every_asymmetric_alg_refuses_a_token_signed_with_another_key(
        make_config: Callable[..., Any], keys_dir: Path, mint: Callable[..., str],
        impostor_keys: dict[str, Any], alg: str) -> None:
    config = make_config(tokens=every_alg_config(keys_dir))
    verifier = Verifier(config.tokens, config.identity)
    token = mint(kid=alg.lower(), key=impostor_keys[alg], alg=alg)
    assert (await refused(verifier, token)).code == "invalid_token"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"])
async def test_access_token_types_are_accepted(verifier: Verifier, mint: Callable[..., str], typ: str) -> None:
    assert (await verifier.verify(mint(headers={"typ": typ}))).sub == "alice"


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_headers_on_a_genuine_token_are_ignored_not_followed(
        verifier: Verifier, mint: Callable[..., str], header: str) -> None:
    token = mint(kid="rsa1", headers={header: "https://attacker.example.test/keys"})
    assert (await verifier.verify(token)).sub == "alice"


# --- the header memo ------------------------------------------------------------------------------

async def test_a_remembered_header_vouches_for_no_other_token(
        verifier: Verifier, mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    genuine = mint(kid="rsa1")
    assert (await verifier.verify(genuine)).sub == "alice"   # its header is now remembered
    header, _, signature = genuine.split(".")
    forged = mint(kid="rsa1", key=private_keys["foreign_rsa"], alg="RS256", roles=["admin"])
    assert forged.split(".")[0] == header
    assert (await refused(verifier, forged)).code == "invalid_token"
    swapped = f"{header}.{b64json(claims(sub='mallory'))}.{signature}"
    assert (await refused(verifier, swapped)).code == "invalid_token"
    expired = mint(kid="rsa1", exp=int(time.time()) - 600)
    assert isinstance(await refused(verifier, expired), ExpiredToken)


async def test_only_genuine_headers_are_remembered_and_the_memo_stays_bounded(
        verifier: Verifier, mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    for i in range(HEADER_MEMO_SIZE + 10):   # forgeries, each with its own header: none is kept
        await refused(verifier, mint(key=private_keys["foreign_rsa"], alg="RS256", kid="rsa1", headers={"x": i}))
    assert len(verifier._headers) == 0
    for i in range(HEADER_MEMO_SIZE + 10):
        assert (await verifier.verify(mint(headers={"x": i}))).sub == "alice"
        assert 0 < len(verifier._headers) <= HEADER_MEMO_SIZE


async def test_a_remembered_header_keeps_naming_its_key(
        make_config: Callable[..., Any], mint: Callable[..., str]) -> None:
    """Two keys share an algorithm: the memo keeps the header's `kid` with its `alg`, so a second token
    with the same header is still checked with the key it names."""
    keys = [{"kid": "main", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "main2", "alg": "HS256", "secret": HS_SECRET[::-1]}]
    config = make_config(tokens={"keys": keys})
    verifier = Verifier(config.tokens, config.identity)
    first, second = (mint(kid="main2", key=HS_SECRET[::-1]) for _ in range(2))
    assert first.split(".")[0] == second.split(".")[0]
    assert (await verifier.verify(first)).sub == "alice"   # its header is now remembered
    assert (await verifier.verify(second)).sub == "alice"


# --- key choice -----------------------------------------------------------------------------------

async def test_kidless_token_is_checked_against_the_single_key_of_its_alg(
        verifier: Verifier, mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    assert (await verifier.verify(mint(kid=None))).sub == "alice"
    assert (await verifier.verify(mint(kid=None, key=private_keys["rsa"], alg="RS256"))).sub == "alice"


async def test_kidless_token_is_refused_when_two_keys_share_its_alg(
        make_config: Callable[..., Any], keys_dir: Path, mint: Callable[..., str]) -> None:
    keys = [{"kid": "main", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "main2", "alg": "HS256", "secret": HS_SECRET[::-1]},
            {"kid": "rsa1", "alg": "RS256", "private_key_file": str(keys_dir / "rsa.pem")}]
    config = make_config(tokens={"keys": keys})
    verifier = Verifier(config.tokens, config.identity)
    assert (await refused(verifier, mint(kid=None))).code == "invalid_token"
    assert (await verifier.verify(mint(kid="main"))).sub == "alice"
    assert (await verifier.verify(mint(kid="main2", key=HS_SECRET[::-1]))).sub == "alice"


async def test_kid_naming_a_key_of_another_alg_is_refused(
        verifier: Verifier, mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    token = mint(kid="main", key=private_keys["rsa"], alg="RS256")   # genuine RS256 signature, wrong key binding
    assert (await refused(verifier, token)).code == "invalid_token"


async def test_unknown_kid_token_is_refused(verifier: Verifier, unknown_kid_token: str) -> None:
    assert (await refused(verifier, unknown_kid_token)).code == "invalid_token"


async def test_alg_outside_the_allow_list_is_refused(verifier: Verifier, mint: Callable[..., str]) -> None:
    token = mint(kid=None, key=HS_SECRET, alg="HS384")   # no HS384 key is configured
    assert (await refused(verifier, token)).code == "invalid_token"


# --- attacks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_token_is_refused(verifier: Verifier, alg_none_token: str, alg: str) -> None:
    header = {"alg": alg, "kid": "main"}
    assert (await refused(verifier, alg_none_token)).code == "invalid_token"
    assert (await refused(verifier, f"{b64json(header)}.{b64json(claims())}.")).code == "invalid_token"


async def test_algorithm_confusion_token_is_refused(verifier: Verifier, algorithm_confusion_token: str) -> None:
    exc = await refused(verifier, algorithm_confusion_token)
    assert exc.code == "invalid_token"
    assert_not_echoed(exc, algorithm_confusion_token)


async def test_foreign_key_token_is_refused(verifier: Verifier, foreign_key_token: str) -> None:
    exc = await refused(verifier, foreign_key_token)
    assert exc.code == "invalid_token" and "signature" in exc.description
    assert_not_echoed(exc, foreign_key_token)


async def test_embedded_key_token_is_checked_against_our_key_and_refused(
        verifier: Verifier, embedded_key_token: str) -> None:
    exc = await refused(verifier, embedded_key_token)
    assert exc.code == "invalid_token"
    assert_not_echoed(exc, embedded_key_token)


async def test_embedded_jwk_with_unknown_kid_is_refused(verifier: Verifier, mint: Callable[..., str],
                                                        private_keys: dict[str, Any]) -> None:
    attacker = private_keys["foreign_rsa"]
    jwk = get_default_algorithms()["RS256"].to_jwk(attacker.public_key(), as_dict=True)
    for kid in ("attacker", None):
        token = mint(kid=kid, key=attacker, alg="RS256", headers={"jwk": jwk})
        assert (await refused(verifier, token)).code == "invalid_token"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "exp", [1], None])
async def test_crit_header_is_refused(verifier: Verifier, mint: Callable[..., str], crit: Any) -> None:
    token = mint(headers={"crit": crit, "exp": 1})   # validly signed: only the crit header is wrong
    assert (await refused(verifier, token)).code == "invalid_token"


@pytest.mark.parametrize("typ", ["tokengate-assertion+jwt", "JOSE", "dpop+jwt", "id_token+jwt", "", 5, ["JWT"]])
async def test_non_access_token_types_are_refused(verifier: Verifier, typ: Any) -> None:
    token = hs256_by_hand({"alg": "HS256", "kid": "main", "typ": typ}, claims(), HS_SECRET.encode())
    assert (await refused(verifier, token)).code == "invalid_token"


@pytest.mark.parametrize("audience", ["accounts", AUDIENCE])
async def test_assertion_token_is_refused_as_an_access_token(config: Any, verifier: Verifier, audience: str) -> None:
    identity = await verifier.verify(Minter(config.tokens, config.identity).mint_access_token("alice", ["admin"]))
    assertion = Minter(config.tokens, config.identity).mint_assertion(identity, audience)
    assert (await refused(verifier, assertion)).code == "invalid_token"


async def test_tampered_payload_is_refused(verifier: Verifier, mint: Callable[..., str]) -> None:
    header, _, signature = mint(roles=["user"]).split(".")
    forged = f"{header}.{b64json(claims(roles=['admin']))}.{signature}"
    assert (await refused(verifier, forged)).code == "invalid_token"


@pytest.mark.parametrize("kid", ["main", "rsa1", "ec1", "ed1"])
async def test_tampered_signature_is_refused(verifier: Verifier, mint: Callable[..., str], kid: str) -> None:
    header, payload, signature = mint(kid=kid).split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    for bad in (flipped, signature[:-4], "", b64(b"\x00" * 64)):
        assert (await refused(verifier, f"{header}.{payload}.{bad}")).code == "invalid_token"


async def test_non_canonical_signature_encoding_is_refused(verifier: Verifier, mint: Callable[..., str]) -> None:
    header, payload, signature = mint().split(".")   # HS256: 32 bytes -> 43 chars, 2 unused bits at the end
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    twin = signature[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    assert twin != signature
    assert (await refused(verifier, f"{header}.{payload}.{twin}")).code == "invalid_token"


@pytest.mark.parametrize("kid, unused_bits", [("main", 2), ("ec1", 4)])   # 32 bytes -> 43 chars, 64 -> 86
async def test_only_the_canonical_last_signature_character_is_accepted(
        verifier: Verifier, mint: Callable[..., str], kid: str, unused_bits: int) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    header, payload, signature = mint(kid=kid).split(".")
    value = alphabet.index(signature[-1])
    assert value % (1 << unused_bits) == 0
    twins = [signature[:-1] + alphabet[value | low] for low in range(1, 1 << unused_bits)]   # same bytes
    assert all(base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(signature + "==") for twin in twins)
    for twin in twins:
        assert (await refused(verifier, f"{header}.{payload}.{twin}")).code == "invalid_token"
    assert (await verifier.verify(f"{header}.{payload}.{signature}")).sub == "alice"


async def test_json_with_whitespace_around_it_is_accepted(verifier: Verifier) -> None:
    header = b64(' {"alg": "HS256", "kid": "main"}\n')
    payload = b64("\r\n\t" + json.dumps(claims()) + " ")
    signing_input = f"{header}.{payload}"
    signature = hmac.new(HS_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert (await verifier.verify(f"{signing_input}.{b64(signature)}")).sub == "alice"


async def test_expired_token_with_a_bad_signature_is_invalid_not_expired(
        verifier: Verifier, mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    now = int(time.time())
    token = mint(kid="rsa1", key=private_keys["foreign_rsa"], alg="RS256", exp=now - 600)
    assert type(await refused(verifier, token)) is InvalidToken


# --- time claims and leeway -----------------------------------------------------------------------

async def test_expired_token_is_refused_as_expired(verifier: Verifier, expired_token: str) -> None:
    exc = await refused(verifier, expired_token)
    assert isinstance(exc, ExpiredToken) and exc.code == "token_expired"
    assert "expired" in exc.description


async def test_not_yet_valid_token_is_refused(verifier: Verifier, not_yet_valid_token: str) -> None:
    exc = await refused(verifier, not_yet_valid_token)
    assert type(exc) is InvalidToken and exc.code == "invalid_token"


async def test_future_iat_token_is_refused(verifier: Verifier, future_iat_token: str) -> None:
    assert type(await refused(verifier, future_iat_token)) is InvalidToken


@pytest.mark.parametrize("claim, offset_s, accepted", [
    ("exp", -20, True), ("exp", -40, False), ("nbf", 20, True), ("nbf", 40, False),
    ("iat", 20, True), ("iat", 40, False),
])
async def test_time_claims_get_the_configured_leeway(verifier: Verifier, mint: Callable[..., str],
                                                     claim: str, offset_s: int, accepted: bool) -> None:
    token = mint(**{claim: int(time.time()) + offset_s})   # config leeway: 30s
    if accepted:
        assert (await verifier.verify(token)).sub == "alice"
    else:
        await refused(verifier, token)


async def test_zero_leeway_refuses_a_just_expired_token(make_config: Callable[..., Any],
                                                        mint: Callable[..., str]) -> None:
    config = make_config(tokens={"leeway": "0s"})
    verifier = Verifier(config.tokens, config.identity)
    assert isinstance(await refused(verifier, mint(exp=int(time.time()) - 2)), ExpiredToken)
    assert type(await refused(verifier, mint(nbf=int(time.time()) + 5))) is InvalidToken


# --- claims ---------------------------------------------------------------------------------------

async def test_wrong_audience_token_is_refused(verifier: Verifier, wrong_audience_token: str) -> None:
    assert (await refused(verifier, wrong_audience_token)).code == "invalid_token"


async def test_wrong_issuer_token_is_refused(verifier: Verifier, wrong_issuer_token: str) -> None:
    assert (await refused(verifier, wrong_issuer_token)).code == "invalid_token"


@pytest.mark.parametrize("claim", ["exp", "jti", "sub", "aud", "iss"])
async def test_token_missing_a_required_claim_is_refused(verifier: Verifier, mint: Callable[..., str],
                                                         claim: str) -> None:
    exc = await refused(verifier, mint(**{claim: None}))
    assert type(exc) is InvalidToken


@pytest.mark.parametrize("claim, value", [
    ("exp", "9999999999"), ("exp", True), ("exp", [9999999999]), ("exp", {"t": 1}), ("exp", 1e400),
    ("nbf", "0"), ("nbf", False), ("iat", "0"), ("iat", True),
    ("sub", 123), ("sub", ""), ("sub", ["alice"]), ("jti", 5), ("jti", ""), ("jti", {}),
    ("aud", 5), ("aud", [1]), ("aud", {"api": True}), ("aud", []),
    ("roles", 5), ("roles", [1]), ("roles", {"admin": True}), ("roles", ["admin", None]),
], ids=lambda v: repr(v)[:20])
async def test_claim_of_the_wrong_json_type_is_invalid_never_a_crash(
        verifier: Verifier, mint: Callable[..., str], claim: str, value: Any) -> None:
    exc = await refused(verifier, mint(**{claim: value}))
    assert type(exc) is InvalidToken and exc.code == "invalid_token"


@pytest.mark.parametrize("iss", [5, [ISSUER], {"iss": ISSUER}, None, ""])
async def test_issuer_of_the_wrong_json_type_is_invalid(verifier: Verifier, iss: Any) -> None:
    token = hs256_by_hand({"alg": "HS256", "kid": "main"}, claims(iss=iss), HS_SECRET.encode())   # PyJWT won't
    assert (await refused(verifier, token)).code == "invalid_token"


# NaN and Infinity are no JSON (refused by the parser); 1e400 is a JSON number that Python reads as inf,
# so only the claim check stands between it and a token that never expires.
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_non_finite_time_claim_is_refused(verifier: Verifier, claim: str, literal: str) -> None:
    payload = json.dumps(claims(**{claim: 0})).replace(f'"{claim}": 0', f'"{claim}": {literal}')
    assert literal in payload
    token = hs256_by_hand({"alg": "HS256", "kid": "main"}, payload, HS_SECRET.encode())
    assert (await refused(verifier, token)).code == "invalid_token"


async def test_hand_signed_control_token_is_accepted(verifier: Verifier) -> None:
    """The helper above signs correctly, so the refusals next to it come from the claim."""
    token = hs256_by_hand({"alg": "HS256", "kid": "main"}, json.dumps(claims()), HS_SECRET.encode())
    assert (await verifier.verify(token)).sub == "alice"


# --- malformed ------------------------------------------------------------------------------------

MALFORMED = {
    "garbage": "garbage",
    "empty": "",
    "two_parts": f"{b64json({'alg': 'HS256'})}.{b64json(claims())}",
    "four_parts": f"{b64json({'alg': 'HS256'})}.{b64json(claims())}.sig.more",
    "bad_base64_chars": "e30!.e30.abc",
    "base64_not_base64url": f"{b64json({'alg': 'HS256'})}.{b64json(claims())}.ab+/",
    "empty_header": f".{b64json(claims())}.abcd",
    "empty_payload": f"{b64json({'alg': 'HS256'})}..abcd",
    "only_dots": "..",
    "payload_trailing_data": f"{b64json({'alg': 'HS256'})}.{b64(json.dumps(claims()) + '{}')}.abcd",
    "bad_base64_length": f"a.{b64json(claims())}.abcd",
    "padding": f"{b64json({'alg': 'HS256'})}==.{b64json(claims())}.abcd",
    "header_not_json": f"{b64('not json')}.{b64json(claims())}.abcd",
    "header_one_character": f"{b64('x')}.{b64json(claims())}.abcd",   # (no JSON value starts at 0: decode decides)
    "payload_one_space": f"{b64json({'alg': 'HS256'})}.{b64(' ')}.abcd",
    "header_is_list": f"{b64json(['alg', 'HS256'])}.{b64json(claims())}.abcd",
    "header_not_utf8": f"{b64(bytes([0xff, 0xfe, 0x7b]))}.{b64json(claims())}.abcd",
    "header_without_alg": f"{b64json({'typ': 'JWT', 'kid': 'main'})}.{b64json(claims())}.abcd",
    "alg_not_a_string": f"{b64json({'alg': ['HS256'], 'kid': 'main'})}.{b64json(claims())}.abcd",
    "kid_not_a_string": f"{b64json({'alg': 'HS256', 'kid': 7})}.{b64json(claims())}.abcd",
    "payload_not_json": f"{b64json({'alg': 'HS256'})}.{b64('nope')}.abcd",
    "payload_is_list": f"{b64json({'alg': 'HS256'})}.{b64json([1, 2])}.abcd",
    "deeply_nested": f"{b64json({'alg': 'HS256'})}.{b64('[' * 5000 + ']' * 5000)}.abcd",
    "too_long": f"{b64json({'alg': 'HS256'})}.{b64json(claims(pad='x' * 20000))}.abcd",
    "spaces": f"{b64json({'alg': 'HS256'})} .{b64json(claims())}.abcd",
    "non_ascii": f"{b64json({'alg': 'HS256'})}.{b64json(claims())}.ab\u00e9",
}


@pytest.mark.parametrize("token", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_token_is_invalid(verifier: Verifier, token: str) -> None:
    assert (await refused(verifier, token)).code == "invalid_token"


async def test_a_token_of_exactly_max_token_chars_passes_and_one_more_is_refused(
        verifier: Verifier, mint: Callable[..., str]) -> None:
    def of_length(target: int) -> str:
        for extra in range(3):   # a base64url segment is never 4n+1 long: a header field shifts the payload's
            for pad in range(target * 3 // 4 - 400, target * 3 // 4):   # base64url: 4 characters per 3 bytes
                token = mint(pad="x" * pad, headers={"x": "y" * extra})
                if len(token) == target:
                    return token
        raise AssertionError(f"no token of {target} characters")

    assert (await verifier.verify(of_length(MAX_TOKEN_CHARS))).sub == "alice"
    assert (await refused(verifier, of_length(MAX_TOKEN_CHARS + 1))).code == "invalid_token"


@pytest.mark.parametrize("token", [None, b"a.b.c", 42], ids=["none", "bytes", "int"])
async def test_non_string_token_is_invalid(verifier: Verifier, token: Any) -> None:
    assert (await refused(verifier, token)).code == "invalid_token"


# --- error descriptions ---------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["expired_token", "not_yet_valid_token", "future_iat_token",
                                     "wrong_audience_token", "wrong_issuer_token", "unknown_kid_token",
                                     "alg_none_token"])
async def test_description_never_contains_the_token_or_its_parts(
        verifier: Verifier, request: pytest.FixtureRequest, fixture: str) -> None:
    token = request.getfixturevalue(fixture)
    assert_not_echoed(await refused(verifier, token), token)


@pytest.mark.parametrize("token", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_description_never_echoes_the_token(verifier: Verifier, token: str) -> None:
    exc = await refused(verifier, token)
    assert not any(part in exc.description for part in token.split(".") if len(part) >= 4)


@pytest.mark.parametrize("case, word", [
    ("expired_token", "expired"), ("wrong_audience_token", "audience"), ("wrong_issuer_token", "issuer"),
    ("unknown_kid_token", "unknown key"), ("alg_none_token", "algorithm"), ("not_yet_valid_token", "not yet valid"),
])
async def test_description_says_why(verifier: Verifier, request: pytest.FixtureRequest, case: str, word: str) -> None:
    assert word in (await refused(verifier, request.getfixturevalue(case))).description


# --- trusted issuers (key source stubbed; the real JwksCache is in tests/integration) -------------

OTHER = "https://other-idp.example.test"
# Who signs what in the trusted-issuer tests: each name is an issuer and the holder of its key. The two
# trusted issuers name their keys alike (`idp1`), so only the issuer can tell which key a token needs.
ISSUERS = {"ours": ISSUER, "idp": TRUSTED, "other_idp": OTHER}
AUDIENCES = {ISSUER: AUDIENCE, TRUSTED: "my-client", OTHER: AUDIENCE}   # OTHER names no audience: ours


class StubJwks:
    """Each trusted issuer's own KeySet, as JwksCache keeps them. ``calls`` lists the issuers whose
    keys were asked for; asking for an issuer that is not trusted fails the test (JwksCache has none)."""

    def __init__(self, keysets: dict[str, KeySet]) -> None:
        self.keysets = keysets
        self.calls: list[str] = []

    async def select(self, issuer: str, kid: str | None, alg: str) -> VerificationKey:
        self.calls.append(issuer)
        if issuer not in self.keysets:
            pytest.fail(f"the verifier asked for the keys of {issuer!r}, which is not a trusted issuer")
        return self.keysets[issuer].select(kid, alg)

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def other_idp_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def trusted_verifier(make_config: Callable[..., Any], private_keys: dict[str, Any],
                     other_idp_key: ec.EllipticCurvePrivateKey) -> tuple[Verifier, StubJwks]:
    config = make_config(tokens={"trusted_issuers": [
        {"issuer": TRUSTED, "jwks_uri": "https://idp.example.test/jwks", "audience": ["my-client"],
         "roles_claim": "groups", "algorithms": ["ES256"]},
        {"issuer": OTHER, "jwks_uri": "https://other-idp.example.test/jwks"},
    ]})
    algorithm = get_default_algorithms()["ES256"]

    def idp1(private: ec.EllipticCurvePrivateKey) -> KeySet:
        return KeySet([VerificationKey("idp1", "ES256", algorithm, algorithm.prepare_key(private.public_key()))])

    stub = StubJwks({TRUSTED: idp1(private_keys["foreign_ec256"]), OTHER: idp1(other_idp_key)})
    return Verifier(config.tokens, config.identity, jwks=stub), stub   # type: ignore[arg-type]


@pytest.fixture
def signed_by(mint: Callable[..., str], private_keys: dict[str, Any],
              other_idp_key: ec.EllipticCurvePrivateKey) -> Callable[[str, str], str]:
    """signed_by(signer, claimed) -> a token claiming issuer ``claimed`` (and its audience), signed with
    the ES256 key of issuer ``signer`` (names of ISSUERS); nothing else differs between the tokens."""
    keys = {"ours": ("ec1", private_keys["ec256"]), "idp": ("idp1", private_keys["foreign_ec256"]),
            "other_idp": ("idp1", other_idp_key)}

    def sign(signer: str, claimed: str) -> str:
        kid, key = keys[signer]
        issuer = ISSUERS[claimed]
        return mint(kid=kid, key=key, alg="ES256", iss=issuer, aud=AUDIENCES[issuer], groups=["ops"])

    return sign


async def test_trusted_issuer_token_uses_its_audience_and_roles_claim(
        trusted_verifier: tuple[Verifier, StubJwks], mint: Callable[..., str], private_keys: dict[str, Any]) -> None:
    verifier, stub = trusted_verifier
    token = mint(kid="idp1", key=private_keys["foreign_ec256"], alg="ES256", iss=TRUSTED, aud="my-client",
                 groups=["ops"], roles=["admin"])
    identity = await verifier.verify(token)
    assert (identity.iss, identity.roles, stub.calls) == (TRUSTED, frozenset({"ops"}), [TRUSTED])
    wrong_aud = mint(kid="idp1", key=private_keys["foreign_ec256"], alg="ES256", iss=TRUSTED, aud=AUDIENCE)
    assert (await refused(verifier, wrong_aud)).code == "invalid_token"


async def test_trusted_issuer_without_audience_requires_ours(
        trusted_verifier: tuple[Verifier, StubJwks], mint: Callable[..., str],
        other_idp_key: ec.EllipticCurvePrivateKey) -> None:
    verifier, _ = trusted_verifier
    signer = {"kid": "idp1", "key": other_idp_key, "alg": "ES256", "iss": OTHER}
    assert (await verifier.verify(mint(aud=AUDIENCE, **signer))).iss == OTHER
    assert (await refused(verifier, mint(aud="anything", **signer))).code == "invalid_token"


async def test_trusted_issuer_alg_outside_its_list_is_refused_before_any_key_lookup(
        trusted_verifier: tuple[Verifier, StubJwks], mint: Callable[..., str]) -> None:
    verifier, stub = trusted_verifier
    token = mint(kid="idp1", key=HS_SECRET, alg="HS256", iss=TRUSTED, aud="my-client")
    assert (await refused(verifier, token)).code == "invalid_token"
    assert stub.calls == []


@pytest.mark.parametrize("issuer", list(ISSUERS))
async def test_each_issuers_token_is_checked_with_its_own_keys(
        trusted_verifier: tuple[Verifier, StubJwks], signed_by: Callable[[str, str], str], issuer: str) -> None:
    """The control for test_issuers_never_share_keys: the same tokens, each signed by its own issuer, pass."""
    verifier, stub = trusted_verifier
    identity = await verifier.verify(signed_by(issuer, issuer))
    assert (identity.iss, identity.sub) == (ISSUERS[issuer], "alice")
    assert stub.calls == ([] if issuer == "ours" else [ISSUERS[issuer]])


@pytest.mark.parametrize("signer, claimed", [(s, c) for s in ISSUERS for c in ISSUERS if s != c],
                         ids=[f"{s}_key_claiming_{c}" for s in ISSUERS for c in ISSUERS if s != c])
async def test_issuers_never_share_keys(trusted_verifier: tuple[Verifier, StubJwks],
                                        signed_by: Callable[[str, str], str], signer: str, claimed: str) -> None:
    """A token claiming one issuer but signed with another's key is refused, even where both issuers
    name their keys alike (idp1); only the claimed issuer's keys are ever consulted."""
    verifier, stub = trusted_verifier
    assert (await refused(verifier, signed_by(signer, claimed))).code == "invalid_token"
    assert stub.calls == ([] if claimed == "ours" else [ISSUERS[claimed]])


@pytest.mark.parametrize("kid, passes", [("idp2", True), ("idp1", False), ("idp3", False)])
async def test_a_trusted_issuers_token_is_checked_with_the_key_its_kid_names(
        make_config: Callable[..., Any], mint: Callable[..., str], private_keys: dict[str, Any],
        other_idp_key: ec.EllipticCurvePrivateKey, kid: str, passes: bool) -> None:
    """An issuer with two keys of one algorithm: `kid` picks the key (DESIGN's key rule holds for
    trusted issuers' keys too), so a token signed with idp2's key passes only when it names idp2;
    naming the other key or one the issuer does not have is refused."""
    config = make_config(tokens={"trusted_issuers": [
        {"issuer": TRUSTED, "jwks_uri": "https://idp.example.test/jwks", "audience": ["my-client"],
         "algorithms": ["ES256"]}]})
    algorithm = get_default_algorithms()["ES256"]
    keys = KeySet([VerificationKey(name, "ES256", algorithm, algorithm.prepare_key(private.public_key()))
                   for name, private in (("idp1", private_keys["foreign_ec256"]), ("idp2", other_idp_key))])
    stub = StubJwks({TRUSTED: keys})
    verifier = Verifier(config.tokens, config.identity, jwks=stub)   # type: ignore[arg-type]
    token = mint(kid=kid, key=other_idp_key, alg="ES256", iss=TRUSTED, aud="my-client")
    if passes:
        assert (await verifier.verify(token)).iss == TRUSTED
    else:
        assert (await refused(verifier, token)).code == "invalid_token"
    assert stub.calls == [TRUSTED]
