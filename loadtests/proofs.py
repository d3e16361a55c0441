"""DPoP on the load generator's side (RFC 9449): a client key per DPoP-bound token of the pool, kept in
the pool as a private JWK, and a fresh proof for every request signed with it (every proof is
single-use fleet-wide and its `iat` must be fresh, so none can be made ahead of the run).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.steps.dpop import PROOF_TYPE, access_token_hash, b64url, thumbprint

DPOP_KINDS = ("dpop", "dpop_wrong_key", "dpop_replay")   # the pool kinds sent with Authorization: DPoP
DPOP_HEADER = "DPoP"   # RFC 9449 4.1: the proof's request header
PROOF_ALG = "ES256"
PUBLIC_MEMBERS = ("kty", "crv", "x", "y")
NO_PROOFS_IN_WRK = "wrk cannot send DPoP proofs (each request needs a fresh ES256 signature; its Lua cannot sign)"
_ES256 = ECAlgorithm(ECAlgorithm.SHA256)


def new_client_key() -> dict[str, Any]:
    """A fresh P-256 client key as a private JWK (what the pool keeps beside a bound token)."""
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    return {name: jwk[name] for name in (*PUBLIC_MEMBERS, "d")}


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    return {name: jwk[name] for name in PUBLIC_MEMBERS}


def key_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of the key's public part: the `cnf.jkt` a token bound to it carries."""
    return thumbprint(public_jwk(jwk))


def needs_proofs(pool: Sequence[Mapping[str, Any]]) -> bool:
    return any(row["kind"] in DPOP_KINDS for row in pool)


def target_uri(url: str, path: str) -> str:
    """The proof's `htu`: the URL the request goes to, without its query (RFC 9449 4.2)."""
    return (url.rstrip("/") + path).split("?", 1)[0]


class ProofSigner:
    """Fresh proofs for one bound token: the header segment, `ath` and the loaded key made once; per
    proof one small JSON dump, base64url and one ES256 signature. ``jti``: a random prefix of this
    signer and a counter, unique across runs and instances."""

    def __init__(self, private_jwk: Mapping[str, Any], token: str, htu: str, method: str = "GET") -> None:
        self._key = ECAlgorithm.from_jwk(json.dumps(dict(private_jwk)))
        header = {"typ": PROOF_TYPE, "alg": PROOF_ALG, "jwk": public_jwk(private_jwk)}
        self._head = b64url(json.dumps(header, separators=(",", ":")).encode())
        self._method, self._htu, self._ath = method, htu, access_token_hash(token)
        self._jti_prefix = secrets.token_urlsafe(9)
        self._count = itertools.count()

    def proof(self) -> str:
        claims = {"jti": f"{self._jti_prefix}.{next(self._count)}", "htm": self._method, "htu": self._htu,
                  "iat": int(time.time()), "ath": self._ath}
        signing_input = f"{self._head}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{signing_input}.{b64url(_ES256.sign(signing_input.encode(), self._key))}"


def signer_for(row: Mapping[str, Any], url: str) -> ProofSigner | None:
    """The signer of a pool row that carries a client key (`dpop`, `dpop_wrong_key`), else None."""
    key = row.get("dpop_key")
    if key is None:
        return None
    return ProofSigner(key, row["token"], row.get("htu") or target_uri(url, row["path"]))
