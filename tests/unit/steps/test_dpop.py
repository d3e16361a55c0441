"""steps/dpop.py and proofreplay.py: every check of RFC 9449 4.3 as a named bad proof, good proofs of each key type, the
RFC's own examples, htu normalisation, thumbprints and binding, and ProofReplay on the memory store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import DependencyDown, InvalidDpopProof, UseDpopNonce
from gateway.steps.dpop import access_token_hash, check_binding, check_proof, normalise_url, thumbprint
from gateway.steps.proofreplay import ProofReplay, replay_key
from gateway.store.memory import MemoryStore
from tests.unit.steps.dpop_proofs import (ACCESS_TOKEN, ALGORITHMS, DROP, MAX_AGE_S, METHOD, NOW, RFC_ACCESS_TOKEN,
                                          RFC_JKT, RFC_RESOURCE_PROOF, RFC_TOKEN_PROOF, URL, b64url, good_claims,
                                          good_header, key, private_jwk, proof, public_jwk, segment, sign)


def check(token: Any, **changes: Any):
    args: dict[str, Any] = {"method": METHOD, "url": URL, "now": NOW, "max_age_s": MAX_AGE_S,
                            "algorithms": ALGORITHMS, "access_token": ACCESS_TOKEN}
    args.update(changes)
    return check_proof(token, **args)


def with_header(**changes: Any) -> str:
    header = {**good_header(), **changes}
    return sign({k: v for k, v in header.items() if v is not DROP}, good_claims(), key("ec256"), "ES256")


def with_jwk(jwk: dict[str, Any], alg: str = "ES256", signer: str = "ec256") -> str:
    return sign({**good_header(), "alg": alg, "jwk": jwk}, good_claims(), key(signer), alg)


def hmac_proof() -> str:
    header = {**good_header(), "alg": "HS256"}
    signing_input = f"{segment(header)}.{segment(good_claims())}"
    mac = hmac.new(json.dumps(header["jwk"]).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def swap_payload(token: str, claims: dict[str, Any] | bytes) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{segment(claims)}.{signature}"


def with_jti_in_base64(chars: str) -> str:
    # A payload segment whose base64url has "-" or "_" (as "?>" encodes to "Pz4"...), sent as "+" and "/".
    header, payload, signature = next(parts for n in range(1, 9) if set("-_") & set((parts := proof(
        jti="?>" * n + "~~").split("."))[1]))
    return f"{header}.{payload.replace('-', chars[0]).replace('_', chars[1])}.{signature}"


def flip_unused_bit(token: str) -> str:
    # An ES256 signature is 64 bytes: 86 characters, the last carrying 4 unused bits, which must be zero.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]


def truncate_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    return f"{head}.{b64url(base64.urlsafe_b64decode(signature + '==')[:-3])}"


def off_curve_jwk() -> dict[str, Any]:
    jwk = public_jwk(key("ec256"))
    return {**jwk, "y": jwk["x"]}


# Each bad proof names the one thing wrong with it (RFC 9449 4.3 step in brackets) and the check's arguments.
BAD: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    # [3] one well-formed JWT in compact form
    "not_a_string": (lambda: proof().encode(), {}),
    "too_long": (lambda: proof(jti="j" * 9000), {}),
    "two_segments": (lambda: proof().rpartition(".")[0], {}),
    "four_segments": (lambda: proof() + ".e30", {}),
    "two_jwts": (lambda: proof() + "," + proof(), {}),
    "empty_signature": (lambda: proof().rpartition(".")[0] + ".", {}),
    "padded_signature": (lambda: proof() + "==", {}),
    "space_inside": (lambda: proof().replace(".", ". ", 1), {}),
    "non_ascii": (lambda: proof() + "é", {}),
    "standard_base64_alphabet": (lambda: with_jti_in_base64("+/"), {}),
    "non_canonical_signature_bits": (lambda: flip_unused_bit(proof()), {}),
    "header_not_json": (lambda: sign(b"{not json", good_claims(), key("ec256"), "ES256"), {}),
    "header_not_an_object": (lambda: sign(b'["dpop+jwt"]', good_claims(), key("ec256"), "ES256"), {}),
    "header_duplicate_member": (lambda: sign(json.dumps(good_header())[:-1].encode() + b',"typ":"jwt"}', good_claims(),
                                             key("ec256"), "ES256"), {}),
    "payload_not_json": (lambda: sign(good_header(), b"jti=1", key("ec256"), "ES256"), {}),
    "payload_nan_iat": (lambda: sign(good_header(), json.dumps(good_claims(iat=float("nan"))).encode(),
                                     key("ec256"), "ES256"), {}),
    # [4] typ
    "typ_missing": (lambda: with_header(typ=DROP), {}),
    "typ_jwt": (lambda: with_header(typ="JWT"), {}),
    "typ_at_jwt": (lambda: with_header(typ="at+jwt"), {}),
    "typ_not_a_string": (lambda: with_header(typ=["dpop+jwt"]), {}),
    # [5] alg: asymmetric, allowed
    "alg_none": (lambda: f"{segment({**good_header(), 'alg': 'none'})}.{segment(good_claims())}.AAAA", {}),
    "alg_hs256_even_if_allowed": (hmac_proof, {"algorithms": ALGORITHMS | {"HS256"}}),
    "alg_not_in_allow_list": (lambda: proof("ec384", "ES384"), {"algorithms": frozenset({"ES256"})}),
    "alg_unknown": (lambda: with_header(alg="ES256K"), {"algorithms": ALGORITHMS | {"ES256K"}}),
    "alg_not_a_string": (lambda: with_header(alg=["ES256"]), {}),
    "crit_header": (lambda: with_header(crit=["exp"], exp=1), {}),
    # [7] jwk: a public key fit for alg
    "jwk_missing": (lambda: with_header(jwk=DROP), {}),
    "jwk_not_an_object": (lambda: with_header(jwk="ec256"), {}),
    "jwk_private_ec": (lambda: with_jwk(private_jwk(key("ec256"))), {}),
    "jwk_private_rsa": (lambda: with_jwk(private_jwk(key("rsa")), "RS256", "rsa"), {}),
    "jwk_private_okp": (lambda: with_jwk(private_jwk(key("ed25519")), "EdDSA", "ed25519"), {}),
    "jwk_oct": (lambda: with_jwk({"kty": "oct", "alg": "ES256"}), {}),
    "jwk_unknown_kty": (lambda: with_jwk({**public_jwk(key("ec256")), "kty": "ECX"}), {}),
    "jwk_kty_not_a_string": (lambda: with_jwk({**public_jwk(key("ec256")), "kty": ["EC"]}), {}),
    "jwk_alg_member_differs": (lambda: with_jwk({**public_jwk(key("ec256")), "alg": "ES384"}), {}),
    "jwk_use_enc": (lambda: with_jwk({**public_jwk(key("ec256")), "use": "enc"}), {}),
    "jwk_point_off_curve": (lambda: with_jwk(off_curve_jwk()), {}),
    "rsa_jwk_with_es256": (lambda: with_jwk(public_jwk(key("rsa")), "ES256", "ec256"), {}),
    "ec_jwk_with_rs256": (lambda: with_jwk(public_jwk(key("ec256")), "RS256", "rsa"), {}),
    "p256_key_with_es384": (lambda: with_jwk(public_jwk(key("ec256")), "ES384", "ec256"), {}),
    "p384_key_with_es256": (lambda: with_jwk(public_jwk(key("ec384")), "ES256", "ec384"), {}),
    "ed448_key_with_eddsa": (lambda: with_jwk(public_jwk(key("ed448")), "EdDSA", "ed448"), {}),
    "okp_jwk_with_es256": (lambda: with_jwk(public_jwk(key("ed25519")), "ES256", "ec256"), {}),
    "rsa_key_under_2048_bits": (lambda: with_jwk(public_jwk(key("rsa1024")), "RS256", "rsa1024"), {}),
    # [6] the signature, by the jwk's key
    "signed_by_another_key": (lambda: with_jwk(public_jwk(key("ec256")), "ES256", "ec256b"), {}),
    "payload_changed_after_signing": (lambda: swap_payload(proof(), good_claims(htm="GET")), {"method": "GET"}),
    "signature_truncated": (lambda: truncate_signature(proof()), {}),
    "ps256_signature_under_rs256": (lambda: sign(good_header("rsa", "RS256"), good_claims(), key("rsa"), "PS256"), {}),
    # [2] required claims
    "jti_missing": (lambda: proof(jti=DROP), {}),
    "htm_missing": (lambda: proof(htm=DROP), {}),
    "htu_missing": (lambda: proof(htu=DROP), {}),
    "iat_missing": (lambda: proof(iat=DROP), {}),
    "jti_empty": (lambda: proof(jti=""), {}),
    "jti_not_a_string": (lambda: proof(jti=12345), {}),
    "jti_too_long": (lambda: proof(jti="j" * 257), {}),
    # [8] htm
    "htm_other_method": (lambda: proof(htm="GET"), {}),
    "htm_lowercase": (lambda: proof(htm="post"), {}),
    # [9] htu
    "htu_other_path": (lambda: proof(htu=URL + "/x"), {}),
    "htu_path_case": (lambda: proof(htu=URL.replace("orders", "Orders")), {}),
    "htu_other_host": (lambda: proof(htu=URL.replace("gw.", "gx.")), {}),
    "htu_http": (lambda: proof(htu=URL.replace("https:", "http:")), {}),
    "htu_other_port": (lambda: proof(htu=URL.replace(".test/", ".test:8443/")), {}),
    "htu_userinfo": (lambda: proof(htu=URL.replace("//", "//alice@")), {}),
    "htu_relative": (lambda: proof(htu="/api/orders/7"), {}),
    "htu_encoded_slash": (lambda: proof(htu=URL.replace("orders/7", "orders%2F7")), {}),
    "htu_not_a_string": (lambda: proof(htu=[URL]), {}),
    "htu_bad_percent": (lambda: proof(htu=URL.replace("/7", "/%G7")), {}),
    # [11] iat
    "iat_too_old": (lambda: proof(iat=NOW - MAX_AGE_S - 1), {}),
    "iat_in_the_future": (lambda: proof(iat=NOW + MAX_AGE_S + 1), {}),
    "iat_a_string": (lambda: proof(iat=str(int(NOW))), {}),
    "iat_a_bool": (lambda: proof(iat=True), {"now": 1.0}),
    "iat_huge": (lambda: proof(iat=10 ** 400), {}),
    # [12] ath
    "ath_missing_with_token": (lambda: proof(ath=DROP), {}),
    "ath_of_another_token": (lambda: proof(), {"access_token": ACCESS_TOKEN + "x"}),
    "ath_without_token": (lambda: proof(), {"access_token": None}),
    "ath_not_a_string": (lambda: proof(ath=1), {}),
}


@pytest.mark.parametrize("name", BAD)
def test_each_bad_proof_is_refused_as_invalid_dpop_proof(name: str):
    make, changes = BAD[name]
    with pytest.raises(InvalidDpopProof) as refused:
        check(make(), **changes)
    assert type(refused.value) is InvalidDpopProof and refused.value.error == "invalid_dpop_proof"
    assert refused.value.status == 400 and refused.value.for_resource().status == 401


@pytest.mark.parametrize("nonce, changes", [(DROP, {}), ("old-nonce", {}), (7, {})])
def test_a_missing_or_stale_nonce_is_refused_as_use_dpop_nonce(nonce: Any, changes: dict[str, Any]):
    with pytest.raises(UseDpopNonce) as refused:
        check(proof(nonce=nonce), nonce_ok=lambda value: value == "fresh")
    assert refused.value.error == "use_dpop_nonce" and refused.value.for_resource().status == 401


def test_a_bad_proof_with_a_good_nonce_is_still_invalid_not_a_nonce_question():
    with pytest.raises(InvalidDpopProof) as refused:
        check(proof(nonce="fresh", htm="GET"), nonce_ok=lambda value: value == "fresh")
    assert type(refused.value) is InvalidDpopProof


@pytest.mark.parametrize("name, alg", [("ec256", "ES256"), ("ec384", "ES384"), ("ec521", "ES512"),
                                       ("rsa", "RS256"), ("rsa", "PS256"), ("ed25519", "EdDSA")])
def test_a_good_proof_of_each_key_type_is_accepted_with_its_thumbprint(name: str, alg: str):
    verified = check(proof(name, alg, jti="one", iat=NOW - 5.5))
    assert (verified.jti, verified.iat, verified.alg) == ("one", NOW - 5.5, alg)
    assert verified.jkt == rfc7638(public_jwk(key(name)))
    assert verified.jwk == public_jwk(key(name))


def rfc7638(jwk: dict[str, Any]) -> str:
    # The test's own reading of RFC 7638 3: the required members, sorted, no whitespace, SHA-256.
    required = {"EC": "crv kty x y", "RSA": "e kty n", "OKP": "crv kty x"}[jwk["kty"]].split()
    text = "{" + ",".join(f'"{m}":"{jwk[m]}"' for m in required) + "}"
    return b64url(hashlib.sha256(text.encode()).digest())


GOOD: dict[str, tuple[Callable[[], str], dict[str, Any]]] = {
    "iat_at_the_old_edge": (lambda: proof(iat=NOW - MAX_AGE_S), {}),
    "iat_at_the_new_edge": (lambda: proof(iat=NOW + MAX_AGE_S), {}),
    "typ_with_application_prefix": (lambda: with_header(typ="application/dpop+jwt"), {}),
    "typ_in_capitals": (lambda: with_header(typ="DPoP+JWT"), {}),
    "jwk_with_kid_alg_and_use": (lambda: with_jwk({**public_jwk(key("ec256")), "kid": "k1", "alg": "ES256",
                                                   "use": "sig"}), {}),
    "header_with_kid": (lambda: with_header(kid="k1"), {}),
    "no_access_token_no_ath": (lambda: proof(ath=DROP), {"access_token": None}),
    "nonce_accepted": (lambda: proof(nonce="fresh"), {"nonce_ok": lambda value: value == "fresh"}),
    "nonce_ignored_when_not_asked": (lambda: proof(nonce="anything"), {}),
    "extra_claims_ignored": (lambda: proof(sub="x", exp=1), {}),
    # The very text of the request URL matches without normalising (the gateway's URL is never malformed).
    "htu_the_same_text": (lambda: proof(htu=URL + "/%zz"), {"url": URL + "/%zz?q=1"}),
}


@pytest.mark.parametrize("name", GOOD)
def test_each_good_variant_is_accepted(name: str):
    make, changes = GOOD[name]
    assert check(make(), **changes).jkt == rfc7638(public_jwk(key("ec256")))


# htu as sent -> the URL the gateway saw: the same URL once normalised (RFC 9449 4.3 step 9, RFC 3986 6.2.2-3).
SAME_URL = [
    ("https://gw.example.test/api/orders/7?x=1", URL),
    ("https://gw.example.test/api/orders/7#frag", URL),
    ("https://gw.example.test/api/orders/7", URL + "?page=2"),
    ("HTTPS://GW.Example.TEST/api/orders/7", URL),
    ("https://gw.example.test:443/api/orders/7", URL),
    ("https://gw.example.test:/api/orders/7", URL),
    ("https://gw.example.test/%61pi/orders/%37", URL),
    ("https://gw.example.test/api/./orders/x/../7", URL),
    ("http://gw.example.test:80", "http://gw.example.test/"),
    ("https://gw.example.test/a%2fb", "https://gw.example.test/a%2Fb"),
    ("https://[2001:DB8::1]:8443/p", "https://[2001:db8::1]:8443/p"),
    ("https://gw.example.test:0443/p", "https://gw.example.test/p"),
]
DIFFERENT_URL = [
    ("https://gw.example.test/api/orders/7", "https://gw.example.test/API/orders/7"),
    ("https://gw.example.test/a/b", "https://gw.example.test/a%2Fb"),
    ("https://gw.example.test/a/", "https://gw.example.test/a"),
    ("https://gw.example.test:8443/", "https://gw.example.test/"),
    ("http://gw.example.test/", "https://gw.example.test/"),
    ("https://gw.example.test./", "https://gw.example.test/"),
]


@pytest.mark.parametrize("htu, url", SAME_URL)
def test_htu_normalised_to_the_request_url_is_accepted(htu: str, url: str):
    assert normalise_url(htu) == normalise_url(url)
    assert check(proof(htu=htu), url=url).jti


@pytest.mark.parametrize("htu, url", DIFFERENT_URL)
def test_htu_of_another_resource_is_refused(htu: str, url: str):
    assert normalise_url(htu) != normalise_url(url)
    with pytest.raises(InvalidDpopProof):
        check(proof(htu=htu), url=url)


@pytest.mark.parametrize("url", ["ftp://gw.example.test/", "https:///p", "https://gw.example.test:99999/",
                                 "https://gw.example.test:8x/", "https://u@gw.example.test/", "//gw.example.test/",
                                 "https://gw.example.test/a b", "https://gw.example.test/%",
                                 "https://gw.example.test/%zz"])
def test_normalise_url_refuses_what_is_no_absolute_http_uri(url: str):
    with pytest.raises(ValueError):
        normalise_url(url)


def test_the_rfc_9449_token_request_example_verifies_near_its_iat():
    verified = check(RFC_TOKEN_PROOF, method="POST", url="https://server.example.com/token", now=1562262616 + 30,
                     access_token=None)
    assert (verified.jkt, verified.jti, verified.iat) == (RFC_JKT, "-BwC3ESc6acc2lTc", 1562262616)
    with pytest.raises(InvalidDpopProof):   # its iat is from 2019
        check(RFC_TOKEN_PROOF, method="POST", url="https://server.example.com/token", now=NOW, access_token=None)


def test_the_rfc_9449_resource_example_verifies_with_its_access_token():
    args = {"method": "GET", "url": "https://resource.example.org/protectedresource", "now": 1562262618.0}
    verified = check(RFC_RESOURCE_PROOF, access_token=RFC_ACCESS_TOKEN, **args)
    assert (verified.jkt, verified.jti) == (RFC_JKT, "e1j3V_bKic8-LAEB")
    assert access_token_hash(RFC_ACCESS_TOKEN) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    with pytest.raises(InvalidDpopProof):
        check(RFC_RESOURCE_PROOF, access_token=RFC_ACCESS_TOKEN + "x", **args)
    check_binding(RFC_JKT, verified)


def test_thumbprint_matches_rfc_7638_section_3_1_and_ignores_optional_members():
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXj"
                "BZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSq"
                "zs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksIN"
                "HaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    for bad in ({"kty": "oct", "k": "c2VjcmV0"}, {"kty": ["RSA"]}, {"kty": "EC", "crv": "P-256", "x": "a", "y": 1}):
        with pytest.raises(ValueError):
            thumbprint(bad)


def test_binding_accepts_only_the_thumbprint_of_the_proof_key():
    verified = check(proof())
    check_binding(rfc7638(public_jwk(key("ec256"))), verified)
    for other in (rfc7638(public_jwk(key("ec256b"))), "", verified.jkt + "A", None):
        with pytest.raises(InvalidDpopProof):
            check_binding(other, verified)   # type: ignore[arg-type]


# -- ProofReplay on the memory store ------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


async def test_a_proof_is_spent_once_and_a_replay_is_refused(store: MemoryStore, clock: Clock):
    replay = ProofReplay(store, MAX_AGE_S, clock=clock)
    verified = check(proof(jti="once"))
    await replay.check_unused(verified)
    with pytest.raises(InvalidDpopProof):
        await replay.check_unused(verified)


async def test_a_proof_replayed_to_another_instance_is_refused(store: MemoryStore, clock: Clock):
    first, second = ProofReplay(store, MAX_AGE_S, clock=clock), ProofReplay(store, MAX_AGE_S, clock=clock)
    verified = check(proof(jti="fleet"))
    await first.check_unused(verified)
    with pytest.raises(InvalidDpopProof):   # the second instance never saw it: the store decides
        await second.check_unused(verified)


async def test_the_same_jti_under_another_key_is_another_proof(store: MemoryStore, clock: Clock):
    replay = ProofReplay(store, MAX_AGE_S, clock=clock)
    mine, theirs = check(proof("ec256", jti="shared")), check(proof("ec256b", jti="shared"))
    assert replay_key(mine) != replay_key(theirs)
    await replay.check_unused(mine)
    await replay.check_unused(theirs)   # jti uniqueness is per key: nobody can spend another client's jti


async def test_a_spent_jti_is_free_again_once_its_window_is_over(store: MemoryStore, clock: Clock):
    replay = ProofReplay(store, MAX_AGE_S, clock=clock)
    verified = check(proof(jti="window"))
    await replay.check_unused(verified)
    clock.now = verified.iat + MAX_AGE_S + 4   # still within the margin for clock differences
    with pytest.raises(InvalidDpopProof):
        await replay.check_unused(verified)
    clock.now = verified.iat + MAX_AGE_S + 6   # check_proof refuses its iat by now anyway
    await replay.check_unused(verified)


async def test_of_concurrent_claims_of_one_proof_exactly_one_wins(store: MemoryStore, clock: Clock):
    replays = [ProofReplay(store, MAX_AGE_S, clock=clock) for _ in range(3)]
    won = await asyncio.gather(*(replays[i % 3].claim("k", NOW + 60) for i in range(30)))
    assert won.count(True) == 1


class CountingStore(MemoryStore):
    def __init__(self, clock: Clock, fail: bool = False) -> None:
        super().__init__(clock=clock)
        self.calls, self.fail = 0, fail

    async def claim_once(self, key: str, expires_at: float) -> bool:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            from gateway.store.base import StoreUnavailable
            raise StoreUnavailable(self.safe_url, "down")
        return await super().claim_once(key, expires_at)


async def test_a_replay_seen_here_costs_no_store_call_and_the_memory_is_bounded(clock: Clock):
    store = CountingStore(clock)
    replay = ProofReplay(store, MAX_AGE_S, capacity=4, clock=clock)
    assert await replay.claim("a", NOW + 60) and not await replay.claim("a", NOW + 60)
    assert store.calls == 1
    for name in "bcdef":
        assert await replay.claim(name, NOW + 60)
    assert len(replay._seen) == 4 and "a" not in replay._seen
    assert not await replay.claim("a", NOW + 60) and store.calls == 7   # forgotten here: the store still refuses


async def test_a_store_that_cannot_answer_fails_closed_and_decides_nothing(clock: Clock):
    store = CountingStore(clock, fail=True)
    replay = ProofReplay(store, MAX_AGE_S, clock=clock)
    verified = check(proof(jti="down"))
    with pytest.raises(DependencyDown):
        await replay.check_unused(verified)
    store.fail = False
    await replay.check_unused(verified)   # undecided before: the store is asked again
