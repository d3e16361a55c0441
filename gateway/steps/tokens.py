"""Minting: access tokens and the short-lived upstream assertion, signed with tokens.signer.

Headers are encoded once at start; per token only the claims are serialised and signed.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config.load import IdentityConfig, TokensConfig
from ..errors import NoSigningKey
from .identity import Identity
from .keys import SigningKey

ACCESS_TOKEN_TYP = "at+jwt"                      # RFC 9068; verify accepts it (and "JWT")
ASSERTION_TYP = "tokengate-assertion+jwt"        # verify refuses it: an assertion is never an access token
ASSERTION_TTL_S = 60.0
REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "jti"})


class Minter:
    """Issues tokens for tokens.issuer. Built once; a verify-only config (``tokens.signer`` None)
    builds fine, and every mint raises NoSigningKey."""

    def __init__(self, tokens: TokensConfig, identity: IdentityConfig,
                 *, clock: Callable[[], float] = time.time) -> None:
        signer, asserter = tokens.signer, tokens.assertion_signer
        self._key = SigningKey.from_config(signer) if signer is not None else None
        # Assertions need a key upstreams can check with the JWKS; HMAC is the last resort (tests,
        # direct use): load_config refuses an assertion_header without an asymmetric key.
        self._assertion_key = SigningKey.from_config(asserter) if asserter is not None else self._key
        self._issuer = tokens.issuer
        self._audience: str | list[str] = tokens.audience[0] if len(tokens.audience) == 1 else list(tokens.audience)
        self._access_ttl_s = tokens.access_ttl
        self._roles_claim = identity.roles_claim
        self._reserved = REGISTERED_CLAIMS | {identity.roles_claim}
        self._clock = clock
        self._access_header = _encode_header(self._key, ACCESS_TOKEN_TYP)
        self._assertion_header = _encode_header(self._assertion_key, ASSERTION_TYP)

    @property
    def can_sign(self) -> bool:
        return self._key is not None

    def mint_access_token(self, sub: str, roles: Sequence[str] = (), ttl_s: float | None = None,
                          extra_claims: Mapping[str, Any] | None = None) -> str:
        """A signed access token. Raises ValueError for a bad argument or an extra claim that
        would override a registered one, NoSigningKey when no key can sign."""
        ttl_s = self._access_ttl_s if ttl_s is None else ttl_s
        _check_subject(sub, ttl_s)
        extra = dict(extra_claims or {})
        overridden = self._reserved.intersection(extra)
        if overridden:
            raise ValueError(f"extra claims may not set {', '.join(sorted(overridden))}")
        now = self._clock()
        claims = {**extra, "iss": self._issuer, "aud": self._audience, "sub": sub, "iat": int(now),
                  "nbf": int(now), "exp": int(now + ttl_s), "jti": uuid.uuid4().hex,
                  self._roles_claim: _role_list(roles)}
        return _sign(self._key, self._access_header, claims)

    def mint_assertion(self, identity: Identity, audience: str, ttl_s: float = ASSERTION_TTL_S) -> str:
        """A short-lived JWT telling upstream ``audience`` who the caller is (identity header
        `identity.assertion_header`). Raises NoSigningKey when no key can sign."""
        _check_subject(identity.sub, ttl_s)
        now = self._clock()
        claims: dict[str, Any] = {"iss": self._issuer, "aud": audience, "sub": identity.sub,
                                  "roles": sorted(identity.roles), "jti": uuid.uuid4().hex,
                                  "iat": int(now), "exp": int(now + ttl_s)}
        email = identity.claims.get("email")
        if isinstance(email, str):
            claims["email"] = email
        return _sign(self._assertion_key, self._assertion_header, claims)


def _encode_header(key: SigningKey | None, typ: str) -> str | None:
    if key is None:
        return None
    header = {"alg": key.alg, "kid": key.kid, "typ": typ}
    return _b64encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def _sign(key: SigningKey | None, header_b64: str | None, claims: dict[str, Any]) -> str:
    if key is None or header_b64 is None:
        raise NoSigningKey()
    payload = json.dumps(claims, separators=(",", ":"), allow_nan=False).encode()
    signing_input = f"{header_b64}.{_b64encode(payload)}"
    return f"{signing_input}.{_b64encode(key.sign(signing_input.encode('ascii')))}"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_subject(sub: Any, ttl_s: float) -> None:
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty string")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")


def _role_list(roles: Sequence[str]) -> list[str]:
    if isinstance(roles, str) or not all(isinstance(role, str) and role for role in roles):
        raise ValueError("roles must be a sequence of non-empty strings")
    return list(dict.fromkeys(roles))


def derived_key(tokens: TokensConfig, info: bytes) -> bytes | None:
    """A 32-byte key for ``info``'s use, derived (HKDF-SHA256) from the signing key's secret or private
    key: the one secret every instance of a fleet already shares. None when no key can sign."""
    signer = tokens.signer
    if signer is None:
        return None
    material = signer.material
    if material.secret is not None:
        secret = material.secret
    else:
        secret = material.private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
