"""The tokens section: keys load and fit their algorithm, kids are unique, trusted issuers are sane."""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway.config.load import GatewayConfig, load_config
from tests.conftest import HS_SECRET
from tests.unit.config.config_checks import SECRET_32, line_in, problems_of, single


@pytest.fixture(scope="module")
def odd_keys(tmp_path_factory: pytest.TempPathFactory, private_keys: dict[str, Any]) -> Path:
    """Key files that must be refused (and a certificate that must be accepted)."""
    d = tmp_path_factory.mktemp("odd-keys")
    pkcs8, spki = serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (d / "rsa1024.pem").write_bytes(small.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    (d / "encrypted.pem").write_bytes(private_keys["rsa"].private_bytes(
        pem, pkcs8, serialization.BestAvailableEncryption(b"passphrase")))
    (d / "garbage.pem").write_text("this is not a key\n")
    (d / "empty.pem").write_text("")
    (d / "truncated.pem").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    (d / "p521.pub.pem").write_bytes(ec.generate_private_key(ec.SECP521R1()).public_key().public_bytes(pem, spki))
    (d / "ed25519.der").write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, pkcs8, serialization.NoEncryption()))
    (d / "cert.pem").write_bytes(_self_signed(private_keys["rsa"]).public_bytes(pem))
    return d


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partner.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.fixture
def write_keys(write_config: Callable[..., Path], keys_dir: Path,
               odd_keys: Path) -> Callable[..., Path]:
    """write_keys("{kid: a, ...}", ..., tokens="signing_key: a") -> a config whose tokens.keys are those lines.

    KEYS/ stands for the test keys directory, ODD/ for the odd_keys one; each entry is on its own line.
    """

    def write(*entries: str, tokens: str = "") -> Path:
        text = ("tokens:\n  issuer: https://auth.example.test\n  audience: api\n"
                + "".join(f"  {line}\n" for line in tokens.splitlines())
                + "  keys:\n" + "".join(f"    - {e}\n" for e in entries)
                + "upstreams:\n  app: {url: http://127.0.0.1:9001}\nroutes:\n  - {path: /, upstream: app}\n")
        return write_config(raw=text.replace("KEYS/", f"{keys_dir}/").replace("ODD/", f"{odd_keys}/"))

    return write


def only(path: Path, key: str, needle: str) -> None:
    found = single(problems_of(path))
    assert (found.key, found.line) == (key, line_in(path, needle)), str(found)


# --- keys that load ----------------------------------------------------------------------------

@pytest.mark.parametrize("alg, name", [("RS256", "rsa"), ("RS384", "rsa"), ("PS256", "rsa"), ("PS512", "rsa"),
                                       ("ES256", "ec256"), ("ES384", "ec384"), ("EdDSA", "ed")])
def test_each_asymmetric_algorithm_loads_its_key(write_keys: Callable[..., Path], alg: str, name: str) -> None:
    cfg = load_config(write_keys(f"{{kid: signer, alg: {alg}, private_key_file: KEYS/{name}.pem}}",
                                 f"{{kid: checker, alg: {alg}, public_key_file: KEYS/{name}.pub.pem}}"), environ={})
    signer, checker = cfg.tokens.keys
    assert signer.can_sign and signer.material.private is not None and signer.material.public is not None
    assert not checker.can_sign and checker.material.private is None and checker.material.public is not None
    assert cfg.tokens.signer is signer


@pytest.mark.parametrize("alg, size", [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_secret_of_the_hash_size_is_enough(write_keys: Callable[..., Path], alg: str, size: int) -> None:
    cfg = load_config(write_keys(f"{{kid: k, alg: {alg}, secret: '{'x' * size}'}}"), environ={})
    assert cfg.tokens.keys[0].material.secret == b"x" * size


@pytest.mark.parametrize("alg, size", [("HS256", 31), ("HS384", 47), ("HS512", 63), ("HS256", 0)])
def test_hmac_secret_shorter_than_the_hash_is_refused(write_keys: Callable[..., Path], alg: str, size: int) -> None:
    path = write_keys(f"{{kid: k, alg: {alg}, secret: '{'x' * size}'}}")
    only(path, "tokens.keys[0].secret", "kid: k")
    if size:
        assert "x" * size not in str(problems_of(path)[0])


def test_secret_length_counts_bytes_not_characters(write_keys: Callable[..., Path]) -> None:
    secret = "ééééééééééééééää"   # 16 characters, 32 bytes: enough for HS256
    cfg = load_config(write_keys(f"{{kid: k, alg: HS256, secret: '{secret}'}}"), environ={})
    assert cfg.tokens.keys[0].material.secret == secret.encode() and len(secret.encode()) == 32
    only(write_keys(f"{{kid: k, alg: HS256, secret: '{secret[:-1]}'}}"), "tokens.keys[0].secret", "kid: k")   # 30 bytes


def test_public_key_may_come_from_a_certificate(write_keys: Callable[..., Path]) -> None:
    cfg = load_config(write_keys("{kid: partner, alg: RS256, public_key_file: ODD/cert.pem}",
                                 f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}"), environ={})
    assert cfg.tokens.keys[0].material.public is not None


def test_relative_key_file_is_found_next_to_the_config(write_keys: Callable[..., Path], keys_dir: Path) -> None:
    path = write_keys("{kid: rsa, alg: RS256, private_key_file: keys/signing.pem}")
    (path.parent / "keys").mkdir(exist_ok=True)
    shutil.copy(keys_dir / "rsa.pem", path.parent / "keys" / "signing.pem")
    assert load_config(path, environ={}).tokens.keys[0].can_sign


def test_keys_never_show_their_material(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config()
    text = repr(cfg) + str(cfg) + repr(cfg.tokens.keys[0].material) + repr(cfg.tokens.keys[1].material)
    assert HS_SECRET not in text and "PRIVATE" not in text


# --- key files that do not load ------------------------------------------------------------------

@pytest.mark.parametrize("entry", [
    "{kid: bad, alg: RS256, private_key_file: KEYS/missing.pem}",
    "{kid: bad, alg: RS256, private_key_file: KEYS/}",                  # a directory
    "{kid: bad, alg: RS256, private_key_file: ODD/garbage.pem}",
    "{kid: bad, alg: RS256, private_key_file: ODD/empty.pem}",
    "{kid: bad, alg: RS256, private_key_file: ODD/truncated.pem}",
    "{kid: bad, alg: RS256, private_key_file: ODD/encrypted.pem}",
    "{kid: bad, alg: EdDSA, private_key_file: ODD/ed25519.der}",          # DER, not PEM
    "{kid: bad, alg: ES256, private_key_file: KEYS/rsa.pem}",             # RSA key for ES256
    "{kid: bad, alg: ES256, private_key_file: KEYS/ec384.pem}",           # P-384 key for ES256
    "{kid: bad, alg: ES384, private_key_file: KEYS/ec256.pem}",
    "{kid: bad, alg: ES512, public_key_file: KEYS/ec256.pub.pem}",
    "{kid: bad, alg: ES256, public_key_file: ODD/p521.pub.pem}",
    "{kid: bad, alg: RS256, private_key_file: KEYS/ec256.pem}",
    "{kid: bad, alg: EdDSA, private_key_file: KEYS/rsa.pem}",
    "{kid: bad, alg: RS256, private_key_file: ODD/rsa1024.pem}",          # too small
    "{kid: bad, alg: ES256, public_key_file: ODD/cert.pem}",              # RSA certificate
])
def test_key_file_that_does_not_load(write_keys: Callable[..., Path], entry: str) -> None:
    field = "private_key_file" if "private_key_file" in entry else "public_key_file"
    only(write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}", entry), f"tokens.keys[1].{field}", "kid: bad")


def test_public_file_given_as_private_key_file(write_keys: Callable[..., Path]) -> None:
    only(write_keys("{kid: rsa, alg: RS256, private_key_file: KEYS/rsa.pub.pem}"),
         "tokens.keys[0].private_key_file", "kid: rsa")


def test_private_file_given_as_public_key_file(write_keys: Callable[..., Path]) -> None:
    only(write_keys("{kid: rsa, alg: RS256, public_key_file: KEYS/rsa.pem}"),
         "tokens.keys[0].public_key_file", "kid: rsa")


def test_every_broken_key_is_reported(write_keys: Callable[..., Path]) -> None:
    path = write_keys("{kid: a, alg: RS256, private_key_file: KEYS/nope.pem}",
                      "{kid: b, alg: ES256, private_key_file: KEYS/rsa.pem}",
                      "{kid: c, alg: HS256, secret: short}")
    assert [(p.key, p.line) for p in problems_of(path)] == [
        ("tokens.keys[0].private_key_file", line_in(path, "kid: a")),
        ("tokens.keys[1].private_key_file", line_in(path, "kid: b")),
        ("tokens.keys[2].secret", line_in(path, "kid: c")),
    ]


# --- how a key is described ----------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "HS257", "hs256", "", "RSA", "ES256K"])
def test_unknown_or_none_algorithm_is_refused(write_keys: Callable[..., Path], alg: str) -> None:
    only(write_keys(f"{{kid: k, alg: '{alg}', secret: {HS_SECRET}}}"), "tokens.keys[0].alg", "kid: k")


@pytest.mark.parametrize("entry, keys", [
    ("{kid: k, alg: HS256, private_key_file: KEYS/rsa.pem}", ["tokens.keys[0].private_key_file"]),
    (f"{{kid: k, alg: HS256, secret: {HS_SECRET}, public_key_file: KEYS/rsa.pub.pem}}",
     ["tokens.keys[0].public_key_file"]),
    ("{kid: k, alg: HS256}", ["tokens.keys[0]"]),
    (f"{{kid: k, alg: RS256, secret: {HS_SECRET}}}", ["tokens.keys[0].secret"]),
    ("{kid: k, alg: RS256, private_key_file: KEYS/rsa.pem, public_key_file: KEYS/rsa.pub.pem}",
     ["tokens.keys[0].public_key_file"]),
    ("{kid: k, alg: ES256}", ["tokens.keys[0]"]),
    (f"{{alg: HS256, secret: {HS_SECRET}, k: 1}}", ["tokens.keys[0].kid", "tokens.keys[0].k"]),
    (f"{{kid: '', alg: HS256, secret: {HS_SECRET}}}", ["tokens.keys[0].kid"]),
])
def test_key_with_the_wrong_fields(write_keys: Callable[..., Path], entry: str, keys: list[str]) -> None:
    path = write_keys(entry)
    assert [(p.key, p.line) for p in problems_of(path)] == [(k, line_in(path, "alg:")) for k in keys]


def test_key_without_kid(write_keys: Callable[..., Path]) -> None:
    only(write_keys(f"{{alg: HS256, secret: {HS_SECRET}}}"), "tokens.keys[0].kid", "alg: HS256")


def test_secret_must_be_a_string(write_keys: Callable[..., Path]) -> None:
    only(write_keys("{kid: k, alg: HS256, secret: 123456789012345678901234567890123456}"),
         "tokens.keys[0].secret", "kid: k")


# --- kids and the signing key --------------------------------------------------------------------

def test_duplicate_kid_points_at_the_second_one(write_keys: Callable[..., Path]) -> None:
    path = write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}",
                      "{kid: rsa, alg: RS256, private_key_file: KEYS/rsa.pem}",
                      "{kid: main, alg: ES256, private_key_file: KEYS/ec256.pem}")
    only(path, "tokens.keys[2].kid", "ec256.pem")


def test_each_duplicate_kid_is_reported(write_keys: Callable[..., Path]) -> None:
    path = write_keys(*(f"{{kid: same, alg: HS256, secret: {c * 32}}}" for c in "abc"))
    assert [p.key for p in problems_of(path)] == ["tokens.keys[1].kid", "tokens.keys[2].kid"]


def test_duplicate_kid_is_reported_even_when_another_key_fails(write_keys: Callable[..., Path]) -> None:
    path = write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}",
                      "{kid: main, alg: RS256, private_key_file: KEYS/rsa.pem}",
                      "{kid: broken, alg: RS256, private_key_file: KEYS/nope.pem}")
    assert [p.key for p in problems_of(path)] == ["tokens.keys[1].kid", "tokens.keys[2].private_key_file"]


@pytest.mark.parametrize("signing_key", ["nope", "Main"])
def test_signing_key_naming_no_key(write_keys: Callable[..., Path], signing_key: str) -> None:
    path = write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}", tokens=f"signing_key: {signing_key}")
    only(path, "tokens.signing_key", "signing_key:")


def test_signing_key_with_only_a_public_key(write_keys: Callable[..., Path]) -> None:
    path = write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}",
                      "{kid: partner, alg: ES256, public_key_file: KEYS/ec256.pub.pem}", tokens="signing_key: partner")
    only(path, "tokens.signing_key", "signing_key:")


def test_unknown_signing_key_is_reported_with_a_broken_key(write_keys: Callable[..., Path]) -> None:
    path = write_keys("{kid: a, alg: RS256, private_key_file: KEYS/nope.pem}", tokens="signing_key: b")
    assert sorted(p.key for p in problems_of(path)) == ["tokens.keys[0].private_key_file", "tokens.signing_key"]


def test_signing_key_picks_the_signer(write_keys: Callable[..., Path]) -> None:
    cfg = load_config(write_keys(f"{{kid: main, alg: HS256, secret: {HS_SECRET}}}",
                                 "{kid: rsa1, alg: RS256, private_key_file: KEYS/rsa.pem}", tokens="signing_key: rsa1"),
                      environ={})
    assert cfg.tokens.signer is cfg.tokens.keys[1]


def test_without_signing_key_the_first_key_that_can_sign_signs(write_keys: Callable[..., Path]) -> None:
    cfg = load_config(write_keys("{kid: partner, alg: ES256, public_key_file: KEYS/ec256.pub.pem}",
                                 "{kid: rsa1, alg: RS256, private_key_file: KEYS/rsa.pem}"), environ={})
    assert cfg.tokens.signer is cfg.tokens.keys[1]


def test_no_key_and_no_trusted_issuer(write_config: Callable[..., Path]) -> None:
    path = write_config(tokens={"keys": [], "signing_key": None})
    found = single(problems_of(path))
    assert (found.key, found.line) == ("tokens.keys", line_in(path, "keys: []"))


# --- audience and trusted issuers ---------------------------------------------------------------

def _issuer(**fields: Any) -> dict[str, Any]:
    return {"issuer": "https://idp.example.test", "jwks_uri": "https://idp.example.test/jwks", **fields}


def test_trusted_issuer_alone_is_enough(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(tokens={"keys": [], "signing_key": None, "trusted_issuers": [_issuer(audience="my-client")]})
    assert cfg.tokens.signer is None
    idp = cfg.tokens.trusted_issuers[0]
    assert (idp.audience, idp.roles_claim) == (("my-client",), None)
    assert "HS256" not in idp.algorithms and idp.algorithms


@pytest.mark.parametrize("uri", ["ftp://idp.test/jwks", "/jwks", "file:///etc/jwks.json", "https://", "jwks"])
def test_trusted_issuer_needs_an_http_jwks_uri(write_config: Callable[..., Path], uri: str) -> None:
    path = write_config(tokens={"trusted_issuers": [_issuer(jwks_uri=uri)]})
    found = single(problems_of(path))
    assert (found.key, found.line) == ("tokens.trusted_issuers[0].jwks_uri", line_in(path, "jwks_uri:"))


@pytest.mark.parametrize("algorithms", [[], ["HS256"], ["RS256", "none"], ["RS256", "HS512"]])
def test_trusted_issuer_algorithms(write_config: Callable[..., Path], algorithms: list[str]) -> None:
    path = write_config(tokens={"trusted_issuers": [_issuer(algorithms=algorithms)]})
    assert single(problems_of(path)).key.startswith("tokens.trusted_issuers[0].algorithms")


@pytest.mark.parametrize("issuers", [[_issuer(), _issuer()], [_issuer(issuer="https://auth.example.test")]])
def test_each_issuer_appears_once(write_config: Callable[..., Path], issuers: list[dict[str, Any]]) -> None:
    path = write_config(tokens={"trusted_issuers": issuers})
    assert single(problems_of(path)).key == f"tokens.trusted_issuers[{len(issuers) - 1}].issuer"


@pytest.mark.parametrize("audience", [[], "", [""]])
def test_audience_is_required(write_config: Callable[..., Path], audience: Any) -> None:
    assert single(problems_of(write_config(tokens={"audience": audience}))).key.startswith("tokens.audience")


def test_audience_list(make_config: Callable[..., GatewayConfig]) -> None:
    assert make_config(tokens={"audience": ["api", "web"]}).tokens.audience == ("api", "web")


def test_secret_from_environment_in_a_key_list(write_keys: Callable[..., Path]) -> None:
    path = write_keys('{kid: main, alg: HS256, secret: "${TG_KEY}"}')
    assert load_config(path, environ={"TG_KEY": SECRET_32}).tokens.keys[0].material.secret == SECRET_32.encode()


@pytest.mark.parametrize(("access", "refresh", "leeway", "longest"),
                         [("15m", "7d", "30s", 7 * 86400 + 30), ("2h", "1h", "0s", 7200), ("1h", "1h", "1m", 3660)])
def test_the_longest_life_of_a_token_is_the_longer_lifetime_plus_the_leeway(
        make_config: Callable[..., GatewayConfig], access: str, refresh: str, leeway: str, longest: float) -> None:
    tokens = make_config(tokens={"access_ttl": access, "refresh_ttl": refresh, "leeway": leeway}).tokens
    assert tokens.longest_life_s == longest
