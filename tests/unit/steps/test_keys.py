"""KeyRing (our keys, key choice, public JWKS), SigningKey, and JWKS parsing for trusted issuers."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from gateway.errors import InvalidToken
from gateway.steps.keys import JwksFetchFailed, KeyRing, SigningKey, keyset_from_jwks
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER, base_config

ASYMMETRIC = frozenset({"RS256", "PS256", "ES256", "ES384", "EdDSA"})


def jwk_of(key: Any, alg: str, /, **extra: Any) -> dict[str, Any]:
    public = key.public_key() if hasattr(key, "public_key") else key
    return {**get_default_algorithms()[alg].to_jwk(public, as_dict=True), **extra}


@pytest.fixture
def ring(make_config: Callable[..., Any]) -> KeyRing:
    return KeyRing.from_config(make_config().tokens)


def test_keyring_holds_the_algorithms_of_its_keys(ring: KeyRing) -> None:
    assert ring.algorithms == {"HS256", "RS256", "ES256", "EdDSA"}


def test_kid_selects_its_key_only_with_its_own_alg(ring: KeyRing) -> None:
    assert ring.select("rsa1", "RS256").kid == "rsa1"
    with pytest.raises(InvalidToken):
        ring.select("rsa1", "HS256")   # the RSA key is never an HMAC secret
    with pytest.raises(InvalidToken):
        ring.select("main", "RS256")


def test_unknown_kid_is_refused(ring: KeyRing) -> None:
    with pytest.raises(InvalidToken) as info:
        ring.select("nope", "HS256")
    assert "unknown key" in info.value.description


def test_kidless_selection_needs_exactly_one_key_of_the_alg(make_config: Callable[..., Any], keys_dir: Path) -> None:
    ring = KeyRing.from_config(make_config().tokens)
    assert ring.select(None, "ES256").kid == "ec1"
    keys = [{"kid": "a", "alg": "HS256", "secret": HS_SECRET}, {"kid": "b", "alg": "HS256", "secret": HS_SECRET}]
    two = KeyRing.from_config(make_config(tokens={"keys": keys, "signing_key": "a"}).tokens)
    with pytest.raises(InvalidToken):
        two.select(None, "HS256")
    assert two.select("b", "HS256").kid == "b"


def test_keys_are_prepared_once_for_their_algorithm(ring: KeyRing, private_keys: dict[str, Any]) -> None:
    rsa_key = ring.select("rsa1", "RS256")
    assert isinstance(rsa_key.key, rsa.RSAPublicKey)
    assert ring.select("main", "HS256").key == HS_SECRET.encode()


def test_public_jwks_lists_public_keys_and_never_secrets(ring: KeyRing) -> None:
    jwks = ring.public_jwks()
    assert [k["kid"] for k in jwks["keys"]] == ["rsa1", "ec1", "ed1"]
    for jwk in jwks["keys"]:
        assert jwk["use"] == "sig" and jwk["alg"] in ASYMMETRIC
        assert not {"k", "d", "p", "q", "dp", "dq", "qi", "key_ops"} & set(jwk)
    assert HS_SECRET not in repr(jwks)


def test_public_jwks_includes_verify_only_keys(make_config: Callable[..., Any], keys_dir: Path) -> None:
    keys = [{"kid": "main", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "partner", "alg": "ES384", "public_key_file": str(keys_dir / "ec384.pub.pem")}]
    ring = KeyRing.from_config(make_config(tokens={"keys": keys}).tokens)
    assert ring.public_jwks() == {"keys": [{**jwk_of(ring.select("partner", "ES384").key, "ES384"),
                                            "kid": "partner", "alg": "ES384", "use": "sig"}]}


def test_public_jwks_returns_a_fresh_copy(ring: KeyRing) -> None:
    ring.public_jwks()["keys"][0]["kid"] = "changed"
    assert ring.public_jwks()["keys"][0]["kid"] == "rsa1"


def test_public_jwks_verifies_our_tokens_with_plain_pyjwt(ring: KeyRing, mint: Callable[..., str]) -> None:
    keyset = jwt.PyJWKSet.from_dict(ring.public_jwks())
    for kid in ("rsa1", "ec1", "ed1"):
        jwk = keyset[kid]
        claims = jwt.decode(mint(kid=kid), jwk, algorithms=[jwk.algorithm_name], audience=AUDIENCE, issuer=ISSUER)
        assert claims["sub"] == "alice"


def test_signing_key_signs_what_the_keyring_verifies(make_config: Callable[..., Any]) -> None:
    tokens = make_config().tokens
    ring = KeyRing.from_config(tokens)
    for key_cfg in tokens.keys:
        signer = SigningKey.from_config(key_cfg)
        assert ring.select(key_cfg.kid, key_cfg.alg).verify(b"a.b", signer.sign(b"a.b"))
        assert not ring.select(key_cfg.kid, key_cfg.alg).verify(b"a.c", signer.sign(b"a.b"))


def test_a_config_crosses_a_pipe_pickled_with_every_key_intact(make_config: Callable[..., Any],
                                                              keys_dir: Path) -> None:
    """A reload's reader process sends the validated config to the workers pickled (server/reload.py):
    every kind of key must arrive and sign or verify exactly as the one that was read."""
    keys = [*base_config(keys_dir)["tokens"]["keys"],
            {"kid": "partner", "alg": "ES384", "public_key_file": str(keys_dir / "ec384.pub.pem")}]
    tokens = make_config(tokens={"keys": keys}).tokens
    copy = pickle.loads(pickle.dumps(tokens))
    ring, ring_copy = KeyRing.from_config(tokens), KeyRing.from_config(copy)
    assert ring_copy.public_jwks() == ring.public_jwks() and len(ring.public_jwks()["keys"]) == 4
    signers = [key_cfg for key_cfg in tokens.keys if key_cfg.can_sign]
    assert {k.alg for k in signers} == {"HS256", "RS256", "ES256", "EdDSA"}
    for original, copied in zip(tokens.keys, copy.keys, strict=True):
        assert repr(copied.material) == repr(original.material)
        if original.can_sign:   # what the copy signs the original verifies, and the other way round
            assert ring.select(original.kid, original.alg).verify(b"a.b", SigningKey.from_config(copied).sign(b"a.b"))
            assert ring_copy.select(original.kid, original.alg).verify(b"a.b",
                                                                       SigningKey.from_config(original).sign(b"a.b"))


def test_a_public_key_cannot_sign(make_config: Callable[..., Any], keys_dir: Path) -> None:
    keys = [{"kid": "main", "alg": "HS256", "secret": HS_SECRET},
            {"kid": "pub", "alg": "RS256", "public_key_file": str(keys_dir / "rsa.pub.pem")}]
    tokens = make_config(tokens={"keys": keys}).tokens
    with pytest.raises(ValueError):
        SigningKey.from_config(tokens.keys[1])


# --- trusted issuers' JWKS documents --------------------------------------------------------------

def test_jwks_keys_are_bound_to_their_alg(private_keys: dict[str, Any]) -> None:
    doc = {"keys": [jwk_of(private_keys["ec256"], "ES256", kid="e1", alg="ES256"),
                    jwk_of(private_keys["rsa"], "RS256", kid="r1", alg="RS256")]}
    keys = keyset_from_jwks(doc, ASYMMETRIC)
    assert keys.select("e1", "ES256").alg == "ES256"
    assert keys.find("r1", "PS256") is None   # the JWK said RS256: PS256 may not use it


def test_jwks_key_without_alg_fits_each_allowed_alg_of_its_type(private_keys: dict[str, Any]) -> None:
    doc = {"keys": [jwk_of(private_keys["rsa"], "RS256", kid="r1")]}
    keys = keyset_from_jwks(doc, frozenset({"RS256", "PS256", "ES256"}))
    assert {keys.select("r1", "RS256").alg, keys.select("r1", "PS256").alg} == {"RS256", "PS256"}
    assert keys.find("r1", "ES256") is None and keys.find("r1", "RS512") is None


def test_jwks_hmac_keys_are_ignored(private_keys: dict[str, Any]) -> None:
    oct_key = {"kty": "oct", "kid": "shared", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    doc = {"keys": [oct_key, jwk_of(private_keys["ec256"], "ES256", kid="e1")]}
    keys = keyset_from_jwks(doc, ASYMMETRIC | {"HS256"})
    assert keys.find("shared", "HS256") is None and "HS256" not in keys.algorithms
    with pytest.raises(JwksFetchFailed):
        keyset_from_jwks({"keys": [oct_key]}, ASYMMETRIC | {"HS256"})


def test_jwks_keys_outside_the_allowed_algorithms_are_ignored(private_keys: dict[str, Any]) -> None:
    doc = {"keys": [jwk_of(private_keys["ec256"], "ES256", kid="e1", alg="ES256"),
                    jwk_of(private_keys["ed"], "EdDSA", kid="d1")]}
    keys = keyset_from_jwks(doc, frozenset({"EdDSA"}))
    assert keys.find("e1", "ES256") is None and keys.select("d1", "EdDSA").kid == "d1"


@pytest.mark.parametrize("bad", ["encryption", "private", "weak_rsa", "curve_mismatch", "not_a_dict",
                                 "kid_not_a_string", "no_verify_op"])
def test_unusable_jwks_keys_are_skipped(private_keys: dict[str, Any], bad: str) -> None:
    good = jwk_of(private_keys["ec256"], "ES256", kid="good")
    rsa_private = get_default_algorithms()["RS256"].to_jwk(private_keys["rsa"], as_dict=True)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    skipped = {
        "encryption": jwk_of(private_keys["rsa"], "RS256", kid="bad", use="enc"),
        "private": {**rsa_private, "kid": "bad"},
        "weak_rsa": jwk_of(weak, "RS256", kid="bad"),
        "curve_mismatch": jwk_of(private_keys["ec256"], "ES256", kid="bad", alg="ES384"),
        "not_a_dict": "bad",
        "kid_not_a_string": jwk_of(private_keys["rsa"], "RS256", kid=["bad"]),
        "no_verify_op": jwk_of(private_keys["rsa"], "RS256", kid="bad", key_ops=["encrypt"]),
    }[bad]
    keys = keyset_from_jwks({"keys": [skipped, good]}, ASYMMETRIC | {"ES384"})
    assert keys.select("good", "ES256").kid == "good"
    assert all(keys.find("bad", alg) is None for alg in ASYMMETRIC | {"ES384"})


@pytest.mark.parametrize("document", [None, [], {"keys": []}, {"keys": "x"}, {"nokeys": 1},
                                      {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}])
def test_jwks_without_usable_keys_is_a_failed_fetch(document: Any) -> None:
    with pytest.raises(JwksFetchFailed):
        keyset_from_jwks(document, ASYMMETRIC)


def test_jwks_key_verifies_the_issuers_signature(private_keys: dict[str, Any]) -> None:
    key = private_keys["foreign_ec256"]
    doc = {"keys": [jwk_of(key, "ES256", kid="e1")]}
    token = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, key, algorithm="ES256")
    signing_input, _, signature = token.rpartition(".")
    selected = keyset_from_jwks(doc, ASYMMETRIC).select(None, "ES256")
    assert selected.verify(signing_input.encode(), jwt.utils.base64url_decode(signature))
    other = keyset_from_jwks({"keys": [jwk_of(ec.generate_private_key(ec.SECP256R1()), "ES256")]}, ASYMMETRIC)
    assert not other.select(None, "ES256").verify(signing_input.encode(), jwt.utils.base64url_decode(signature))
