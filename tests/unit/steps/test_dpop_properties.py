"""steps/dpop.py by properties: a good proof mutated field by field (header, claims, signature,
serialisation) is refused, unless the mutation is a no-op by RFC 9449/3986 (then it must be accepted);
and a differential test against a reference: joserfc for the JWS part, this file's own claim checks.

Every mutation says what it expects: REFUSED, or ACCEPTED (a no-op: the same typ, URL or time window).
Claim mutations are re-signed with the proof's key, so only the claim check can refuse them; mutations
of the serialised text are not re-signed, so the signature (or the parser) must.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry

from gateway.errors import InvalidDpopProof
from gateway.steps.dpop import check_proof
from tests.unit.steps.dpop_proofs import (ACCESS_TOKEN, ALGORITHMS, MAX_AGE_S, METHOD, NOW, URL, ath, b64url,
                                          good_claims, good_header, key, private_jwk, sign)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIGNERS = [("ec256", "ES256"), ("rsa", "PS256"), ("ed25519", "EdDSA")]
NONCE = "fresh-nonce"
ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3), max_leaves=5)


@dataclass
class Case:
    """A proof to build: header, claims, the key that signs, and a text edit made after signing."""

    name: str
    alg: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signer: Any
    sign_alg: str
    edit: Any = None
    expect_ok: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    def token(self) -> str:
        token = sign(self.header, self.claims, self.signer, self.sign_alg)
        return self.edit(token) if self.edit else token

    def check_args(self) -> dict[str, Any]:
        return {"method": METHOD, "url": URL, "now": NOW, "max_age_s": MAX_AGE_S, "algorithms": ALGORITHMS,
                "access_token": ACCESS_TOKEN, "nonce_ok": lambda value: value == NONCE, **self.args}


def base_case(draw: Any) -> Case:
    name, alg = draw(st.sampled_from(SIGNERS))
    return Case("good", alg, good_header(name, alg), {**good_claims(), "nonce": NONCE}, key(name), alg,
                expect_ok=True)


def same_typ(value: Any) -> bool:   # RFC 7515 4.1.9: case-insensitive, "application/" optional
    return isinstance(value, str) and value.lower().removeprefix("application/") == "dpop+jwt"


@st.composite
def header_mutations(draw: Any) -> Case:
    case = base_case(draw)
    what = draw(st.sampled_from(["typ", "typ_spelling", "alg", "drop", "jwk_member", "jwk_private", "jwk_extra",
                                 "crit"]))
    header, jwk = case.header, dict(case.header["jwk"])
    if what == "typ":
        header["typ"] = draw(JSON_VALUES | st.sampled_from(["jwt", "dpop", "dpop+jwt ", "application/jwt"]))
        case.expect_ok = same_typ(header["typ"])
    elif what == "typ_spelling":   # a no-op: the same media type
        header["typ"] = draw(st.sampled_from(["dpop+jwt", "DPOP+JWT", "Dpop+Jwt", "application/dpop+jwt",
                                              "Application/DPoP+JWT"]))
        case.expect_ok = True
    elif what == "alg":
        header["alg"] = draw(st.sampled_from(["none", "HS256", "ES384", "ES512", "RS256", "PS384", "EdDSA", "Ed25519",
                                              "es256", ""]).filter(lambda a: a != case.alg) | JSON_VALUES)
        case.expect_ok = False
    elif what == "drop":
        del header[draw(st.sampled_from(["typ", "alg", "jwk"]))]
        case.expect_ok = False
    elif what == "jwk_member":
        member = draw(st.sampled_from(sorted(jwk)))
        jwk[member] = draw(JSON_VALUES.filter(lambda v: v != jwk[member]))
        header["jwk"], case.expect_ok = jwk, False
    elif what == "jwk_private":
        secret = private_jwk(case.signer)
        member = draw(st.sampled_from(sorted(set(secret) - set(jwk)) + ["k", "dp", "oth"]))
        jwk[member] = secret.get(member, b64url(b"secret"))
        header["jwk"], case.expect_ok = jwk, False
    elif what == "jwk_extra":   # optional members change nothing (RFC 7517 4)
        jwk[draw(st.sampled_from(["kid", "x5t", "ext"]))] = draw(st.text(max_size=8))
        header["jwk"], case.expect_ok = jwk, True
    else:
        header["crit"], case.expect_ok = draw(st.sampled_from([["exp"], [], "b64"])), False
    case.name = f"header.{what}"
    return case


def same_url(htu: Any) -> bool:
    """The test's own reading of RFC 9449 4.3 step 9 (urllib, not the step's code)."""
    if not isinstance(htu, str) or not re.fullmatch(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*", htu):
        return False
    parts = urllib.parse.urlsplit(htu)
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() != "https" or parts.username is not None or port not in (None, 443):
        return False
    if re.search(r"%(?![0-9A-Fa-f]{2})", parts.path):
        return False
    # urljoin removes dot segments (RFC 3986 5.2.4); "%2F" is data, never a separator.
    path = urllib.parse.urlsplit(urllib.parse.urljoin("https://h/", urllib.parse.unquote(parts.path))).path
    return (parts.hostname or "") == "gw.example.test" and path == "/api/orders/7" and "%2f" not in parts.path.lower()


HTU_NO_OPS = ["HTTPS://gw.example.test/api/orders/7", "https://GW.EXAMPLE.test/api/orders/7",
              "https://gw.example.test:443/api/orders/7", "https://gw.example.test:/api/orders/7",
              "https://gw.example.test/api/orders/7?a=b", "https://gw.example.test/api/orders/7#x",
              "https://gw.example.test/%61%70%69/orders/7", "https://gw.example.test/api/./orders/7",
              "https://gw.example.test/api/orders/x/../7"]


HTU_OTHERS = ["http://gw.example.test/api/orders/7", "https://gw.example.test/api/orders",
              "https://gw.example.test:8443/api/orders/7", "https://gw.example.test/api/orders/7/",
              "https://u@gw.example.test/api/orders/7", "/api/orders/7", "https://gw.example.test/api/orders%2F7"]


@st.composite
def claim_mutations(draw: Any) -> Case:
    case = base_case(draw)
    claims = case.claims
    what = draw(st.sampled_from(["htm", "htu", "htu_no_op", "iat", "iat_type", "jti", "ath", "nonce", "drop"]))
    if what == "htm":
        claims["htm"] = draw(st.sampled_from(["GET", "post", "PUT", "POST ", ""]) | JSON_VALUES)
        case.expect_ok = claims["htm"] == METHOD
    elif what == "htu":
        claims["htu"] = draw(st.sampled_from(HTU_OTHERS) | st.text(max_size=12).map(lambda t: URL + t) | JSON_VALUES)
        case.expect_ok = same_url(claims["htu"])
    elif what == "htu_no_op":
        claims["htu"], case.expect_ok = draw(st.sampled_from(HTU_NO_OPS)), True
    elif what == "iat":
        claims["iat"] = draw(st.integers(int(NOW - 3 * MAX_AGE_S), int(NOW + 3 * MAX_AGE_S))
                             | st.floats(NOW - 3 * MAX_AGE_S, NOW + 3 * MAX_AGE_S))
        case.expect_ok = abs(NOW - claims["iat"]) <= MAX_AGE_S
    elif what == "iat_type":
        claims["iat"] = draw(st.sampled_from([str(int(NOW)), True, None, [NOW], 10 ** 30]))
        case.expect_ok = False
    elif what == "jti":   # any other jti is another proof, fine by itself (uniqueness is ProofReplay's)
        claims["jti"] = draw(JSON_VALUES | st.text(min_size=250, max_size=260))
        case.expect_ok = isinstance(claims["jti"], str) and 0 < len(claims["jti"]) <= 256
    elif what == "ath":
        claims["ath"] = draw(st.sampled_from([ath(ACCESS_TOKEN + "x"), ath(ACCESS_TOKEN).upper(), ""]) | JSON_VALUES)
        case.expect_ok = claims["ath"] == ath(ACCESS_TOKEN)
    elif what == "nonce":
        claims["nonce"] = draw(st.sampled_from([NONCE + "x", NONCE.upper()]) | JSON_VALUES)
        case.expect_ok = claims["nonce"] == NONCE
    else:
        del claims[draw(st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]))]
        case.expect_ok = False
    case.name = f"claims.{what}"
    return case


def flip_signature_bit(bit: int):
    def edit(token: str) -> str:
        head, _, sig = token.rpartition(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[bit // 8 % len(raw)] ^= 1 << bit % 8
        return f"{head}.{b64url(bytes(raw))}"
    return edit


@st.composite
def text_mutations(draw: Any) -> Case:
    """Edits of the signed text: never re-signed, so every one must be refused."""
    case = base_case(draw)
    what = draw(st.sampled_from(["signature_bit", "char", "insert", "delete", "swap_segments", "resign_other_key"]))
    if what == "signature_bit":
        case.edit = flip_signature_bit(draw(st.integers(0, 4095)))
    elif what == "char":
        at, char = draw(st.integers(0, 10_000)), draw(st.characters(codec="ascii"))
        case.edit = lambda t: t[:at % len(t)] + char + t[at % len(t) + 1:] if t[at % len(t)] != char else t + "."
    elif what == "insert":
        at, text = draw(st.integers(0, 10_000)), draw(st.sampled_from([".", "=", "==", " ", "\t", "\n", "..", "+"]))
        case.edit = lambda t: t[:at % (len(t) + 1)] + text + t[at % (len(t) + 1):]
    elif what == "delete":
        at, n = draw(st.integers(0, 10_000)), draw(st.integers(1, 3))
        case.edit = lambda t: t[:at % len(t)] + t[at % len(t) + n:]
    elif what == "swap_segments":
        case.edit = lambda t: ".".join([t.split(".")[1], t.split(".")[0], t.split(".")[2]])
    else:   # the header names one key, another key of the same type signs
        case.signer = key({"ES256": "ec256b", "PS256": "rsa_b", "EdDSA": "ed25519b"}[case.alg])
    case.name, case.expect_ok = f"text.{what}", False
    return case


def outcome(case: Case) -> tuple[bool, str]:
    try:
        check_proof(case.token(), **case.check_args())
    except InvalidDpopProof as exc:
        return False, exc.description
    return True, ""


@SETTINGS
@given(header_mutations())
def test_every_header_mutation_is_refused_unless_it_is_a_no_op(case: Case):
    assert outcome(case)[0] == case.expect_ok, (case.name, case.header, outcome(case)[1])


@SETTINGS
@given(claim_mutations())
def test_every_claim_mutation_is_refused_unless_it_is_a_no_op(case: Case):
    assert outcome(case)[0] == case.expect_ok, (case.name, case.claims, outcome(case)[1])


@SETTINGS
@given(text_mutations())
def test_every_edit_of_the_signed_text_is_refused(case: Case):
    token = case.token()
    assert outcome(case)[0] is False, (case.name, token)


# -- differential: joserfc for the JWS part, this file's claim checks --------------------------------------

def reference_accepts(token: str, args: dict[str, Any]) -> bool:
    """RFC 9449 4.3 by a second implementation: joserfc parses and verifies the JWS (signature, alg
    against the allow-list, the jwk as key). The rules it does not have are the REFERENCE_RULES below."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)   # joserfc warns on EdDSA and small RSA keys
            registry = JWSRegistry(algorithms=sorted(args["algorithms"] & ASYMMETRIC))
            registry.max_header_length = 8 * 1024   # its default, 512 bytes, is less than an RSA jwk
            header = jws.extract_compact(token.encode(), registry=registry).headers()
            jwk_key = JWKRegistry.import_key(header["jwk"])
            verified = jws.deserialize_compact(token, jwk_key, registry=registry)
    except Exception:   # joserfc refuses with JoseError, and KeyError/ValueError/TypeError on odd input
        return False
    return reference_rules(token, header, jwk_key) and reference_claims(verified.payload, args)


def reference_rules(token: str, header: dict[str, Any], jwk_key: Any) -> bool:
    """REFERENCE_RULES: what RFC 9449 and the gateway's policy add to a generic JWS library."""
    if len(token) > 8 * 1024 or not same_typ(header.get("typ")) or "crit" in header:   # size cap; 4.3 step 4
        return False
    if jwk_key.is_private or header["jwk"].get("kty") not in ("EC", "RSA", "OKP"):      # 4.3 step 7; no oct
        return False
    # Stricter than joserfc's is_private: a private member of any key type (an EC key with "dp") is refused.
    if {"d", "p", "q", "dp", "dq", "qi", "oth", "r", "t", "k"} & header["jwk"].keys():
        return False
    if header["jwk"].get("use", "sig") != "sig" or header["jwk"].get("alg", header["alg"]) != header["alg"]:
        return False
    raw = jwk_key.raw_value
    if header["jwk"]["kty"] == "OKP" and header["jwk"].get("crv") != "Ed25519":        # EdDSA means Ed25519 here
        return False
    if header["jwk"]["kty"] == "RSA" and raw.key_size < 2048:                           # keys under 2048 bits
        return False
    segment = token.split(".")[0]
    pairs = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)), object_pairs_hook=list)
    return len(pairs) == len(dict(pairs))   # one name, one value


def reference_claims(payload: bytes, args: dict[str, Any]) -> bool:
    try:
        claims = json.loads(payload, object_pairs_hook=lambda p: dict(p) if len(dict(p)) == len(p) else 1 / 0,
                            parse_constant=lambda c: 1 / 0)
    except (ValueError, ZeroDivisionError, UnicodeDecodeError):
        return False
    if not isinstance(claims, dict) or not {"jti", "htm", "htu", "iat"} <= claims.keys():
        return False
    iat, jti = claims["iat"], claims["jti"]
    if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not -1e11 <= iat <= 1e11 or math.isnan(iat):
        return False
    token, ath_ok = args["access_token"], True
    if token is None:
        ath_ok = "ath" not in claims or claims["ath"] is None
    else:
        ath_ok = claims.get("ath") == b64url(hashlib.sha256(token.encode()).digest())
    nonce = claims.get("nonce")
    nonce_ok = isinstance(nonce, str) and args["nonce_ok"](nonce)
    return (isinstance(jti, str) and 0 < len(jti) <= 256 and claims["htm"] == args["method"]
            and same_url(claims["htu"]) and abs(args["now"] - iat) <= args["max_age_s"] and ath_ok and nonce_ok)


@SETTINGS
@given(st.one_of(header_mutations(), claim_mutations(), text_mutations()))
def test_the_step_and_the_reference_agree_on_every_proof(case: Case):
    token = case.token()
    ours, why = outcome(case)
    assert ours == reference_accepts(token, case.check_args()), (case.name, token, why)
