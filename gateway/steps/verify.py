"""Step 3: bearer token (str) -> Identity, or InvalidToken / ExpiredToken / DependencyDown.

Header policy and claim checks here; key choice in steps/keys.py; signatures by PyJWT's algorithm objects.
"""

from __future__ import annotations

import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from ..config.load import IdentityConfig, TokensConfig, TrustedIssuerConfig
from ..errors import ExpiredToken, InvalidToken
from .identity import Identity
from .keys import JwksCache, KeyRing, VerificationKey

MAX_TOKEN_CHARS = 16 * 1024
# RFC 8725 3.11 explicit typing: only access tokens pass (`typ` is optional; "application/" may prefix it).
ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_BASE64 = _BASE64URL[:62] + b"+/"
_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"===", b"==", b"=")   # by length % 4 (a length of 4n+1 is never valid)
# A segment of 4n+2 (4n+3) characters leaves 4 (2) unused bits in its last character. Only the
# last characters with those bits zero are canonical; others would let several strings carry one value.
_ZERO_TAILS = {2: frozenset(_BASE64[::16]), 3: frozenset(_BASE64[::4])}
_NUMBER_TYPES = (int, float)
# Headers of genuinely signed tokens, remembered by their exact segment: a signer writes the same header
# on every token, so it is parsed once per key, not once per token. Only a verified signature adds one
# (so forgeries cannot fill it); when this many are kept, the memo starts over.
HEADER_MEMO_SIZE = 64


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """What a token from one issuer must satisfy. ``trusted``: its keys come from a JwksCache."""

    issuer: str
    audience: frozenset[str]
    roles_claim: str
    algorithms: frozenset[str]
    trusted: bool = False
    subject_prefix: str = ""   # a trusted issuer's `sub` reaches upstreams as {subject_prefix}{sub}


class Verifier:
    """Verifies access tokens; build it once from config (everything it can prepare, it does here).

    ``keyring``: our prepared keys, when the caller already built them (they also serve the JWKS
    endpoint); else built from ``tokens``. ``jwks`` serves the keys of ``tokens.trusted_issuers``;
    when it is None and trusted issuers are configured, the Verifier makes one with its own
    ClientSession, closed by ``close()``.
    """

    def __init__(self, tokens: TokensConfig, identity: IdentityConfig, jwks: JwksCache | None = None,
                 *, keyring: KeyRing | None = None) -> None:
        self.keys = keyring if keyring is not None else KeyRing.from_config(tokens)
        self._leeway_s = tokens.leeway
        self._headers: dict[bytes, tuple[str, str | None]] = {}   # header segment -> (alg, kid)
        own = IssuerPolicy(tokens.issuer, frozenset(tokens.audience), identity.roles_claim, self.keys.algorithms)
        self._policies = {own.issuer: own}
        for trusted in tokens.trusted_issuers:
            self._policies[trusted.issuer] = _trusted_policy(trusted, tokens, identity)
        if jwks is None and tokens.trusted_issuers:
            jwks = JwksCache(tokens.trusted_issuers)
        self.jwks = jwks

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> Identity:
        """The token's Identity. Raises ExpiredToken, InvalidToken (with the reason as its
        description, never any part of the token), or DependencyDown (trusted issuer's JWKS down)."""
        signing_input, header_b64, payload_b64, signature_b64 = _split(token)
        known = self._headers.get(header_b64)
        alg, kid = known if known is not None else _check_header(_decode_json(header_b64, "header"))
        claims = _decode_json(payload_b64, "payload")
        policy = self._policy_for(claims)
        if alg not in policy.algorithms:
            raise InvalidToken("the token's algorithm is not allowed")
        if policy.trusted:
            key = await self._trusted_key(policy, kid, alg)
        else:   # our own keys: no await, so the cold path never suspends
            key = self.keys.select(kid, alg)
        _check_signature(key, signing_input, _decode_signature(signature_b64))
        if known is None:
            self._remember_header(header_b64, alg, kid)
        return self._identity(claims, policy, time.time())

    def _remember_header(self, header_b64: bytes, alg: str, kid: str | None) -> None:
        if len(self._headers) >= HEADER_MEMO_SIZE:
            self._headers.clear()   # keys were rotated many times: start over with the headers in use
        self._headers[header_b64] = (alg, kid)

    def _policy_for(self, claims: dict[str, Any]) -> IssuerPolicy:
        # Routing on the unverified `iss` is safe: each issuer's tokens are checked only with its own keys.
        issuer = claims.get("iss")
        policy = self._policies.get(issuer) if isinstance(issuer, str) else None
        if policy is None:
            raise InvalidToken("the token's issuer is not accepted")
        return policy

    async def _trusted_key(self, policy: IssuerPolicy, kid: str | None, alg: str) -> VerificationKey:
        assert self.jwks is not None
        return await self.jwks.select(policy.issuer, kid, alg)

    def _identity(self, claims: dict[str, Any], policy: IssuerPolicy, now: float) -> Identity:
        exp = _time_claim(claims, "exp")
        if exp is None:
            raise InvalidToken("the token has no expiry (exp)")
        if exp <= now - self._leeway_s:
            raise ExpiredToken("the access token expired")
        nbf, iat = _time_claim(claims, "nbf"), _time_claim(claims, "iat")
        if nbf is not None and nbf > now + self._leeway_s:
            raise InvalidToken("the token is not yet valid (nbf)")
        if iat is not None and iat > now + self._leeway_s:
            raise InvalidToken("the token is not yet valid (issued in the future)")
        _check_audience(claims.get("aud"), policy.audience)
        sub = policy.subject_prefix + _string_claim(claims, "sub")
        return Identity(sub=sub, roles=_roles(claims.get(policy.roles_claim)),
                        jti=_string_claim(claims, "jti"), iss=policy.issuer, exp=exp, iat=iat, claims=claims)


def _trusted_policy(cfg: TrustedIssuerConfig, tokens: TokensConfig, identity: IdentityConfig) -> IssuerPolicy:
    # A trusted issuer without its own audience must still name ours: never accept any audience.
    audience = frozenset(cfg.audience or tokens.audience)
    return IssuerPolicy(cfg.issuer, audience, cfg.roles_claim or identity.roles_claim,
                        frozenset(cfg.algorithms), trusted=True, subject_prefix=cfg.subject_prefix or "")


def _split(token: Any) -> tuple[bytes, bytes, bytes, bytes]:
    """(signing input, header, payload, signature): the token's ASCII bytes, the segments already
    mapped from the base64url alphabet to base64's. Raises InvalidToken unless the token is three
    base64url segments (no padding), the first two not empty."""
    if not isinstance(token, str):
        raise InvalidToken("the token is malformed (not a string)")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("the token is malformed (too long)")
    if not token.isascii():
        raise InvalidToken("the token is malformed (not a compact JWS)")
    raw = token.encode("ascii")
    # Deleting every base64url character must leave exactly the two separators.
    if raw.translate(None, _BASE64URL) != b"..":
        raise InvalidToken("the token is malformed (not a compact JWS)")
    header, payload, signature = raw.translate(_TO_BASE64).split(b".")
    if not header or not payload:
        raise InvalidToken("the token is malformed (not a compact JWS)")
    return raw[: len(header) + 1 + len(payload)], header, payload, signature


def _b64decode(segment: bytes) -> bytes:
    """A segment from _split (base64 alphabet, unpadded) -> its bytes."""
    try:
        return binascii.a2b_base64(segment + _PADDING[len(segment) % 4])
    except binascii.Error as exc:
        raise InvalidToken("the token is malformed (bad base64url)") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)   # RFC 8259 has no NaN or Infinity
_SCAN = _JSON.scan_once   # the C scanner behind _JSON.decode (same parse_constant)


def _decode_json(segment: bytes, part: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    try:
        value = _parse_json(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidToken(f"the token is malformed ({part} is not JSON)") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"the token is malformed ({part} is not a JSON object)")
    return value


def _parse_json(text: str) -> Any:
    """_JSON.decode(text), without its two whitespace passes when the text has no whitespace
    around its value (JSON as every JWT library writes it)."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:   # no value at the very start (e.g. leading whitespace): decode decides
        end = -1
    if end == len(text):
        return value
    return _JSON.decode(text)   # trailing whitespace, extra data, or no value: decode decides


def _decode_signature(segment: bytes) -> bytes:
    # Accept only the canonical encoding: non-zero unused bits would make several strings one signature.
    zero_tail = _ZERO_TAILS.get(len(segment) % 4)
    if zero_tail is not None and segment[-1] not in zero_tail:
        raise InvalidToken("the token is malformed (non-canonical signature encoding)")
    return _b64decode(segment)


def _check_header(header: dict[str, Any]) -> tuple[str, str | None]:
    """(alg, kid). `jku`, `x5u`, `x5c` and `jwk` are never read: keys come only from config."""
    if "crit" in header:   # RFC 7515 4.1.11: we understand no extension, so any crit is fatal
        raise InvalidToken("the token has critical header extensions (crit) this gateway does not support")
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
    if not isinstance(alg, str):
        raise InvalidToken("the token is malformed (no algorithm in its header)")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("the token is malformed (kid is not a string)")
    if typ is not None and (not isinstance(typ, str)
                            or typ.lower().removeprefix("application/") not in ACCESS_TOKEN_TYPES):
        raise InvalidToken("the token's type (typ) is not an access token")
    return alg, kid


def _check_signature(key: VerificationKey, signing_input: bytes, signature: bytes) -> None:
    try:
        valid = key.verify(signing_input, signature)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise InvalidToken("the token's signature is invalid") from exc
    if not valid:
        raise InvalidToken("the token's signature is invalid")


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate (RFC 7519 2): a JSON number, not a bool or a string; None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) not in _NUMBER_TYPES or (type(value) is float and not math.isfinite(value)):
        raise InvalidToken(f"the token is malformed ({name} is not a number)")
    return value


def _string_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise InvalidToken(f"the token has no {name} claim")
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"the token is malformed ({name} is not a non-empty string)")
    return value


def _check_audience(aud: Any, accepted: frozenset[str]) -> None:
    if aud is None:
        raise InvalidToken("the token has no audience (aud)")
    if isinstance(aud, str):
        if aud not in accepted:
            raise InvalidToken("the token's audience is not accepted here")
        return
    if not isinstance(aud, list) or not _all_strings(aud):
        raise InvalidToken("the token is malformed (aud is not a string or a list of strings)")
    if accepted.isdisjoint(aud):
        raise InvalidToken("the token's audience is not accepted here")


def _all_strings(values: list[Any]) -> bool:
    for value in values:
        if not isinstance(value, str):
            return False
    return True


def _roles(value: Any) -> frozenset[str]:
    """Roles: a JSON list of strings, or one space-separated string (as OAuth `scope`); absent = none."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and _all_strings(value):
        return frozenset(value)
    raise InvalidToken("the token is malformed (roles is not a list of strings)")
