"""steps/binding.py: a certificate-bound token (RFC 8705 cnf.x5t#S256) passes only with its certificate;
an unbound one is never touched."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.errors import InvalidToken
from gateway.steps.binding import X5T_S256, certificate_thumbprint, check_certificate_binding
from tests.tlsfiles import MtlsFiles, write_mtls_files


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MtlsFiles:
    return write_mtls_files(tmp_path_factory.mktemp("mtls"))


def der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def alice(certs: MtlsFiles) -> bytes:
    return der_of(certs.clients["alice"][0])


@pytest.fixture(scope="module")
def bob(certs: MtlsFiles) -> bytes:
    return der_of(certs.clients["bob"][0])


def bound_to(der: bytes) -> dict[str, Any]:
    return {"sub": "alice", "cnf": {X5T_S256: certificate_thumbprint(der)}}


def test_the_thumbprint_is_base64url_sha256_of_the_der_without_padding(certs, alice):
    # Computed a second way: cryptography's own fingerprint of the parsed certificate.
    cert = x509.load_pem_x509_certificate(certs.clients["alice"][0].read_bytes())
    expected = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).decode().rstrip("=")
    assert certificate_thumbprint(alice) == expected
    assert len(expected) == 43 and "=" not in expected


@pytest.mark.parametrize("claims", [{"sub": "alice"}, {"sub": "alice", "cnf": {"jkt": "abc"}}],
                         ids=["unbound", "dpop_bound"])
def test_a_token_without_x5t_passes_with_or_without_a_certificate(claims, alice):
    check_certificate_binding(claims, None)
    check_certificate_binding(claims, alice)


def test_a_bound_token_passes_with_its_certificate(alice):
    check_certificate_binding(bound_to(alice), alice)


@pytest.mark.parametrize("presented", ["none", "bob"])
def test_a_bound_token_without_its_certificate_is_an_invalid_token(alice, bob, presented):
    with pytest.raises(InvalidToken) as info:
        check_certificate_binding(bound_to(alice), None if presented == "none" else bob)
    assert (info.value.status, info.value.code) == (401, "invalid_token")
    assert "certificate" in info.value.description


@pytest.mark.parametrize("cnf", ["a-string", ["x5t#S256"], {X5T_S256: 42}, {X5T_S256: None, "jkt": 1}],
                         ids=["cnf_string", "cnf_list", "x5t_number", "x5t_null"])
def test_a_malformed_confirmation_claim_is_refused_or_binds_nothing(cnf, alice):
    claims = {"sub": "alice", "cnf": cnf}
    if isinstance(cnf, dict) and cnf.get(X5T_S256) is None:
        check_certificate_binding(claims, None)   # no x5t#S256 at all: not certificate-bound
        return
    with pytest.raises(InvalidToken):
        check_certificate_binding(claims, alice)
