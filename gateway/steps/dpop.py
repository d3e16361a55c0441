"""DPoP (RFC 9449): a proof (str) and the request it came with -> DpopProof, or InvalidDpopProof /
UseDpopNonce: every check of section 4.3 but the jti's uniqueness (proofreplay.py keeps that).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from ..config.keyfiles import check_key_fits
from ..errors import InvalidDpopProof, UseDpopNonce

PROOF_TYPE = "dpop+jwt"
# RFC 9449 4.3 step 5: asymmetric signature algorithms only; `none` and HS* never, whatever the allow-list says.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
MAX_PROOF_CHARS = 8 * 1024   # an RSA-4096 jwk plus the claims fits in ~1.5 KB
MAX_JTI_CHARS = 256
HEADER_MEMO_SIZE = 1024     # proof headers (one a client key) whose checked key is remembered
MAX_TIME = 1e11             # epoch seconds (year 5138): a larger iat is no date (and a huge int no float)
# RFC 7638 3.2 (RSA, EC) and RFC 8037 2 (OKP): the required members, the only ones a thumbprint hashes.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
# RFC 7518 6.2.2, 6.3.2, 6.4 and RFC 8037 2: members that only a private (or symmetric) key has.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "r", "t", "k"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")   # RFC 3986 2: reserved, unreserved, %
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/]*)(.*)", re.DOTALL)
_PERCENT = re.compile(r"%(.?.?)")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A verified proof: its key's RFC 7638 thumbprint (``jkt``), its ``jti`` and ``iat``, the key."""

    jkt: str
    jti: str
    iat: float
    alg: str
    public_key: Any
    jwk: Mapping[str, Any] = field(compare=False)   # the header's jwk, read-only


def check_proof(proof: str, *, method: str, url: str, now: float, max_age_s: float, algorithms: frozenset[str],
                access_token: str | None = None, nonce_ok: Callable[[str], bool] | None = None) -> DpopProof:
    """Every check of RFC 9449 4.3 but the jti's uniqueness (ProofReplay). ``url`` is the URL the
    client used (scheme, host, path; its query is ignored); ``access_token`` the one presented with
    the proof (a protected resource: `ath` required), None at the token endpoint (`ath` refused);
    ``nonce_ok`` judges the `nonce` claim when the server hands out nonces. ``tokens.leeway`` has no
    part here: `iat` must be within ``max_age_s`` of ``now`` either way.
    Raises InvalidDpopProof (its description names the failed check) or UseDpopNonce."""
    header_b64, payload_b64, signature_b64 = _split(proof)                  # step 3
    key = _proof_key(header_b64)                                             # steps 4, 5 and 7
    if key.alg not in algorithms:                                            # step 5: local policy
        raise InvalidDpopProof("the DPoP proof's algorithm is not allowed")
    signing_input = proof[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
    if not _verifies(key, signing_input, _b64decode(signature_b64)):         # step 6
        raise InvalidDpopProof("the DPoP proof's signature is invalid")
    claims = _decode_json(_b64decode(payload_b64), "payload")
    jti, iat = _check_claims(claims, method, url, now, max_age_s)
    _check_ath(claims, access_token)
    if nonce_ok is not None:   # step 10, last: a nonce is asked for only of an otherwise good proof
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not nonce_ok(nonce):
            raise UseDpopNonce()
    return DpopProof(key.jkt, jti, iat, key.alg, key.public_key, key.jwk)


def check_binding(cnf_jkt: str, proof: DpopProof) -> None:
    """RFC 9449 4.3 step 12 / 6.1: the token's `cnf.jkt` must be the proof key's thumbprint."""
    if not isinstance(cnf_jkt, str) or not hmac.compare_digest(cnf_jkt.encode(), proof.jkt.encode()):
        raise InvalidDpopProof("the DPoP proof's key is not the key the token is bound to")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url(SHA-256(the required members, sorted, no whitespace)). Raises ValueError
    for a key type without a thumbprint here (`oct`) or a required member that is not a string."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("no thumbprint for this key type")
    required = {name: jwk.get(name) for name in members}
    if not all(isinstance(value, str) for value in required.values()):
        raise ValueError("a required member of the key is not a string")
    text = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(text.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """RFC 9449 4.2 `ath`: base64url(SHA-256(the ASCII access token))."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _split(proof: Any) -> tuple[str, str, str]:
    """The header, payload and signature segments of exactly one compact JWS, or InvalidDpopProof."""
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_CHARS or not proof.isascii():
        raise InvalidDpopProof("the DPoP proof is not one JWT in compact form")
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidDpopProof("the DPoP proof is not one JWT in compact form")
    return parts[0], parts[1], parts[2]


def _b64decode(segment: str) -> bytes:
    # Canonical base64url only (RFC 7515 2: no padding, no whitespace, zero unused bits): one proof, one text.
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDpopProof("the DPoP proof is malformed (bad base64url)") from exc
    if b64url(raw) != segment:
        raise InvalidDpopProof("the DPoP proof is malformed (bad base64url)")
    return raw


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):   # RFC 7515 4 / RFC 7519 4: duplicate names would read two ways
        raise ValueError("duplicate member")
    return members


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)


def _decode_json(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidDpopProof(f"the DPoP proof's {part} is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidDpopProof(f"the DPoP proof's {part} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class _ProofKey:
    alg: str
    algorithm: Algorithm
    public_key: Any
    jwk: Mapping[str, Any]
    jkt: str


@functools.lru_cache(maxsize=HEADER_MEMO_SIZE)
def _proof_key(header_b64: str) -> _ProofKey:
    """The key a proof header names, checked (RFC 9449 4.3 steps 4, 5 but the allow-list, and 7). A
    pure function of the header's text, remembered: a client sends the same header with every proof,
    so its JSON is parsed, its key loaded and its thumbprint computed once. Only headers that pass are
    kept (lru_cache keeps no exception), at most HEADER_MEMO_SIZE (least recently used go first)."""
    header = _decode_json(_b64decode(header_b64), "header")
    alg, algorithm, public_key, jwk = _check_header(header)
    return _ProofKey(alg, algorithm, public_key, MappingProxyType(jwk), thumbprint(jwk))


def _check_header(header: dict[str, Any]) -> tuple[str, Algorithm, Any, dict[str, Any]]:
    """RFC 9449 4.3 steps 4, 5 and 7: (alg, its Algorithm, the public key, the jwk)."""
    if "crit" in header:   # RFC 7515 4.1.11: no extension is understood here
        raise InvalidDpopProof("the DPoP proof has critical header extensions (crit)")
    typ, alg, jwk = header.get("typ"), header.get("alg"), header.get("jwk")
    # RFC 7515 4.1.9: media type names are case-insensitive and "application/" may be left out.
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != PROOF_TYPE:
        raise InvalidDpopProof("the DPoP proof's typ is not dpop+jwt")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise InvalidDpopProof("the DPoP proof's algorithm is not allowed")
    if not isinstance(jwk, dict):
        raise InvalidDpopProof("the DPoP proof has no jwk header")
    if not PRIVATE_MEMBERS.isdisjoint(jwk):   # step 7: a private key in a header is a leaked key
        raise InvalidDpopProof("the DPoP proof's jwk is not a public key")
    algorithm, public_key = _load_key(jwk, alg)
    return alg, algorithm, public_key, jwk


def _load_key(jwk: dict[str, Any], alg: str) -> tuple[Algorithm, Any]:
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in THUMBPRINT_MEMBERS or jwk.get("alg", alg) != alg \
            or jwk.get("use", "sig") != "sig":
        raise InvalidDpopProof("the DPoP proof's jwk cannot be used with its algorithm")
    try:
        loaded = jwt.PyJWK(jwk, algorithm=alg)
        # PyJWK takes an EC key of any curve for any ES* alg: the key must fit the alg exactly.
        check_key_fits(alg, loaded.key)   # also refuses private keys and RSA keys under 2048 bits
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise InvalidDpopProof("the DPoP proof's jwk cannot be used with its algorithm") from exc
    return loaded.Algorithm, loaded.key


def _verifies(key: _ProofKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        return bool(key.algorithm.verify(signing_input, key.public_key, signature))
    except (ValueError, TypeError, jwt.PyJWTError):
        return False


def _check_claims(claims: dict[str, Any], method: str, url: str, now: float, max_age_s: float) -> tuple[str, float]:
    """RFC 9449 4.3 steps 2, 8, 9 and 11: (jti, iat)."""
    for name in ("jti", "htm", "htu", "iat"):   # step 2: the claims of 4.2 every proof has
        if name not in claims:
            raise InvalidDpopProof(f"the DPoP proof has no {name} claim")
    jti, htm, htu, iat = claims["jti"], claims["htm"], claims["htu"], claims["iat"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise InvalidDpopProof("the DPoP proof's jti is not a string of 1 to 256 characters")
    if htm != method:   # RFC 9110 9.1: methods are case-sensitive
        raise InvalidDpopProof("the DPoP proof's htm is not this request's method")
    # The same text as the URL (the usual case) needs no normalising: ``url`` is the gateway's own.
    if not isinstance(htu, str) or not (htu == _without_query(url) or _same_url(htu, url)):
        raise InvalidDpopProof("the DPoP proof's htu is not this request's URL")
    if type(iat) not in (int, float) or abs(iat) > MAX_TIME or not math.isfinite(iat):   # NaN: not > either
        raise InvalidDpopProof("the DPoP proof's iat is not a number")
    if abs(now - iat) > max_age_s:   # step 11, both ways: no leeway beyond max_age_s
        raise InvalidDpopProof("the DPoP proof's iat is outside the accepted window")
    return jti, float(iat)


def _check_ath(claims: dict[str, Any], access_token: str | None) -> None:
    # Step 12: with an access token, `ath` must be its hash; without one (the token endpoint) a proof
    # made for a resource request (`ath` present) is refused, so a proof serves one purpose only.
    ath = claims.get("ath")
    if access_token is None:
        if ath is not None:
            raise InvalidDpopProof("the DPoP proof has an ath claim but no access token came with it")
        return
    if not isinstance(ath, str) or not access_token.isascii():
        raise InvalidDpopProof("the DPoP proof's ath is not the access token's hash")
    if not hmac.compare_digest(ath.encode(), access_token_hash(access_token).encode()):
        raise InvalidDpopProof("the DPoP proof's ath is not the access token's hash")


def _without_query(url: str) -> str:
    return url.split("#", 1)[0].split("?", 1)[0]


def _same_url(htu: str, url: str) -> bool:
    try:
        return normalise_url(htu) == normalise_url(url)
    except ValueError:   # a URL that is not an absolute http(s) URI matches nothing
        return False


def normalise_url(url: str) -> str:
    """RFC 9449 4.3 step 9: the URL without query and fragment, normalised by RFC 3986 6.2.2 (scheme
    and host lowercased, percent-encodings of unreserved characters decoded and the others' hex
    uppercased, dot segments removed) and 6.2.3 (an empty or default port dropped, an empty path is
    "/"). Raises ValueError for anything but an absolute http(s) URI, or one with userinfo."""
    if not _URI_CHARS.fullmatch(url):
        raise ValueError("not a URI")
    match = _ABSOLUTE.fullmatch(re.split(r"[?#]", url, maxsplit=1)[0])
    if match is None:
        raise ValueError("not an absolute URI with an authority")
    scheme, authority, path = match.group(1).lower(), match.group(2), match.group(3)
    if scheme not in _DEFAULT_PORTS or "@" in authority:
        raise ValueError("not an http(s) URI without userinfo")
    host, port = _split_authority(authority)
    host = _normalise_percent(host).lower()
    if not host:
        raise ValueError("no host")
    port_part = "" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}"
    return f"{scheme}://{host}{port_part}{_remove_dot_segments(_normalise_percent(path) or '/')}"


def _split_authority(authority: str) -> tuple[str, int | None]:
    end = authority.rfind("]") + 1 if authority.startswith("[") else 0   # an IP literal holds colons
    host, colon, port = authority[end:].partition(":")
    host = authority[:end] + host
    if not colon or port == "":   # RFC 3986 6.2.3: an empty port is the default port
        return host, None
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("bad port")
    return host, int(port)


def _normalise_percent(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        hex_digits = match.group(1)
        if len(hex_digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hex_digits):
            raise ValueError("bad percent-encoding")
        char = chr(int(hex_digits, 16))
        return char if char in _UNRESERVED else f"%{hex_digits.upper()}"   # RFC 3986 6.2.2.1, 6.2.2.2

    return _PERCENT.sub(one, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for a path that starts with "/" (what an authority is followed by)."""
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    trailing = "/" if path.endswith(("/.", "/..")) and output else ""
    return "/" + "/".join(output) + trailing
