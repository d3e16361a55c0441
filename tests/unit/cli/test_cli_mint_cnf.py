"""``tokengate mint --cnf-x5t CERTFILE``: the token is bound to that certificate (RFC 8705 cnf.x5t#S256)."""

from __future__ import annotations

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.steps.binding import X5T_S256, certificate_thumbprint, check_certificate_binding
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER
from tests.tlsfiles import MtlsFiles, write_mtls_files
from tests.unit.cli.test_cli import run


@pytest.fixture
def certs(tmp_path) -> MtlsFiles:
    return write_mtls_files(tmp_path)


def claims_of(token: str) -> dict:
    return jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)


def test_mint_cnf_x5t_binds_the_token_to_the_certificate(write_config, capsys, certs):
    cert_file = certs.clients["alice"][0]
    status, out, _ = run(capsys, "mint", "--config", str(write_config()), "--sub", "alice", "--cnf-x5t", str(cert_file))
    assert status == 0
    claims = claims_of(out.strip())
    der = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert claims["cnf"] == {X5T_S256: certificate_thumbprint(der)}
    check_certificate_binding(claims, der)   # what the gateway will check


def test_mint_cnf_x5t_keeps_the_other_confirmation_members_of_claim(write_config, capsys, certs):
    status, out, _ = run(capsys, "mint", "--config", str(write_config()), "--sub", "alice",
                         "--claim", 'cnf={"jkt": "abc"}', "--cnf-x5t", str(certs.clients["bob"][0]))
    assert status == 0
    assert set(claims_of(out.strip())["cnf"]) == {"jkt", X5T_S256}


def test_mint_without_cnf_x5t_binds_nothing(write_config, capsys):
    status, out, _ = run(capsys, "mint", "--config", str(write_config()), "--sub", "alice")
    assert status == 0 and "cnf" not in claims_of(out.strip())


@pytest.mark.parametrize("bad", ["missing", "key", "cnf_string"])
def test_mint_cnf_x5t_refuses_what_is_not_a_certificate(write_config, capsys, certs, tmp_path, bad):
    extra = {"missing": ["--cnf-x5t", str(tmp_path / "nowhere.pem")],
             "key": ["--cnf-x5t", str(certs.clients["alice"][1])],
             "cnf_string": ["--claim", "cnf=abc", "--cnf-x5t", str(certs.clients["alice"][0])]}[bad]
    status, out, err = run(capsys, "mint", "--config", str(write_config()), "--sub", "alice", *extra)
    assert status == 2 and out == ""
    assert "Traceback" not in err and "--c" in err
