"""forward/client_cert.py and the header policy: the client certificate header is believed, and passed
on, only from a trusted proxy; from anyone else it is ignored and never reaches the upstream."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from multidict import CIMultiDict

from gateway.config.load import IdentityConfig
from gateway.errors import ConflictingHeaders
from gateway.forward.client_cert import certificate_from_header
from gateway.forward.headers import HeaderPolicy, Peer, request_header_items
from gateway.steps.binding import certificate_thumbprint
from tests.tlsfiles import MtlsFiles, write_mtls_files

HEADER = "X-Client-Cert"
POLICY = HeaderPolicy.from_config(IdentityConfig(), (), HEADER)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MtlsFiles:
    return write_mtls_files(tmp_path_factory.mktemp("mtls"))


def escaped(path: Path) -> str:
    """As nginx's $ssl_client_escaped_cert sends it: the PEM, URL-encoded."""
    return quote(path.read_text(), safe="")


def test_an_escaped_pem_header_gives_the_certificate(certs):
    pem = certs.clients["alice"][0].read_text()
    der = certificate_from_header([escaped(certs.clients["alice"][0])])
    assert der == ssl.PEM_cert_to_DER_cert(pem)
    assert certificate_thumbprint(der)


@pytest.mark.parametrize("value", ["", "not a certificate", quote("-----BEGIN CERTIFICATE-----\n!!\n"),
                                   "%ZZ"], ids=["empty", "text", "no_footer", "bad_escape"])
def test_a_header_that_is_not_a_certificate_gives_none(value):
    assert certificate_from_header([value]) is None


def test_a_chain_in_the_header_gives_none(certs):
    chain = certs.clients["alice"][0].read_text() + certs.client_ca.read_text()
    assert certificate_from_header([quote(chain, safe="")]) is None


def test_no_header_gives_none():
    assert certificate_from_header([]) is None


def test_two_copies_of_the_header_conflict(certs):
    value = escaped(certs.clients["alice"][0])
    with pytest.raises(ConflictingHeaders):
        certificate_from_header([value, value])


@pytest.mark.parametrize(("trusted", "name", "forwarded"), [
    (True, HEADER, True), (False, HEADER, False), (False, "x-client-cert", False), (False, "X_Client_Cert", False),
    (True, "X_Client_Cert", False)])
def test_the_header_reaches_the_upstream_only_from_a_trusted_proxy(trusted, name, forwarded):
    headers = CIMultiDict([("Host", "api.test"), (name, "value")])
    items, _ = request_header_items(headers, POLICY, Peer("10.0.0.1", "http", trusted), {})
    assert ("value" in [v for _, v in items]) is forwarded


def test_without_the_setting_the_header_is_an_ordinary_one():
    plain = HeaderPolicy.from_config(IdentityConfig())
    items, _ = request_header_items(CIMultiDict([(HEADER, "value")]), plain, Peer("10.0.0.1", "http", False), {})
    assert (HEADER, "value") in items
