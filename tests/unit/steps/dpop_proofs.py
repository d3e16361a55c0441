"""DPoP proofs for the tests, built with `cryptography` alone (not PyJWT, which the step uses): keys,
their JWKs, and compact JWS signed by hand, so a header or claim can be anything at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

NOW = 1_700_000_000.0
METHOD = "POST"
URL = "https://gw.example.test/api/orders/7"
MAX_AGE_S = 60.0
ACCESS_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"})
# RFC 9449 figures 2 and 13 (the same key; RFC 8792 line folding undone), figure 8's jkt, 4.2's token.
RFC_TOKEN_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscE"
    "JoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwia"
    "WF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg")
RFC_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscE"
    "JoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0Z"
    "WRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9"
    ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA")
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


@cache
def key(name: str) -> Any:
    """A private key by name, made once per test run."""
    makers = {"ec256": lambda: ec.generate_private_key(ec.SECP256R1()),
              "ec256b": lambda: ec.generate_private_key(ec.SECP256R1()),
              "ec384": lambda: ec.generate_private_key(ec.SECP384R1()),
              "ec521": lambda: ec.generate_private_key(ec.SECP521R1()),
              "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
              "rsa_b": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
              "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
              "ed25519": ed25519.Ed25519PrivateKey.generate, "ed25519b": ed25519.Ed25519PrivateKey.generate,
              "ed448": ed448.Ed448PrivateKey.generate}
    return makers[name]()


def public_jwk(private: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        numbers = public.public_numbers()
        return {"kty": "EC", "crv": crv, "x": _int(numbers.x, size), "y": _int(numbers.y, size)}
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    crv = "Ed25519" if isinstance(public, ed25519.Ed25519PublicKey) else "Ed448"
    return {"kty": "OKP", "crv": crv, "x": b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))}


def private_jwk(private: Any) -> dict[str, Any]:
    """The public JWK plus the private member(s): what a careless client might send."""
    jwk = public_jwk(private)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        jwk["d"] = _int(private.private_numbers().private_value, len(base64.urlsafe_b64decode(jwk["x"] + "==")))
    elif isinstance(private, rsa.RSAPrivateKey):
        numbers = private.private_numbers()
        jwk.update(d=_int(numbers.d), p=_int(numbers.p), q=_int(numbers.q))
    else:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
        jwk["d"] = b64url(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return jwk


def raw_signature(private: Any, alg: str, data: bytes) -> bytes:
    """The JWS signature of ``data`` (RFC 7518 3; RFC 8037 3.1), whatever key and alg are paired."""
    if alg == "EdDSA":
        return private.sign(data)
    digest = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(digest)))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg.startswith("PS"):
        return private.sign(data, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    return private.sign(data, padding.PKCS1v15(), digest)


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode() if not isinstance(value, bytes) else value)


def sign(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, private: Any, alg: str) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64url(raw_signature(private, alg, signing_input.encode()))}"


def good_header(name: str = "ec256", alg: str = "ES256") -> dict[str, Any]:
    return {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key(name))}


def good_claims(**changes: Any) -> dict[str, Any]:
    claims = {"jti": "jti-" + hashlib.sha256(repr(sorted(changes.items())).encode()).hexdigest()[:16],
              "htm": METHOD, "htu": URL, "iat": int(NOW), "ath": ath(ACCESS_TOKEN)}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not DROP}


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def proof(name: str = "ec256", alg: str = "ES256", **claim_changes: Any) -> str:
    return sign(good_header(name, alg), good_claims(**claim_changes), key(name), alg)


DROP = object()   # a claim change that removes the claim
