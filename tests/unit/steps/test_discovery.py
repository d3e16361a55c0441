"""Provider metadata (steps/discovery.py): what a discovery document must be before anything of it is used."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.steps.discovery import FetchFailed, ProviderMetadata

ISSUER = "https://idp.example.test"
GOOD = {"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/auth", "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks", "end_session_endpoint": f"{ISSUER}/logout",
        "code_challenge_methods_supported": ["S256"], "authorization_response_iss_parameter_supported": True,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"]}


def test_a_good_document_gives_its_endpoints_and_capabilities() -> None:
    metadata = ProviderMetadata.from_document(GOOD, ISSUER)
    assert (metadata.token_endpoint, metadata.jwks_uri) == (f"{ISSUER}/token", f"{ISSUER}/jwks")
    assert metadata.iss_parameter_supported and metadata.code_challenge_methods == ("S256",)


def test_defaults_of_what_a_document_leaves_out() -> None:
    metadata = ProviderMetadata.from_document({"issuer": ISSUER}, ISSUER)
    assert metadata.token_auth_methods == ("client_secret_basic",) and not metadata.iss_parameter_supported
    assert metadata.end_session_endpoint is None


@pytest.mark.parametrize("document", [
    {**GOOD, "issuer": "https://evil.test"},              # Discovery 4.3: the issuer must be the one asked for
    {**GOOD, "issuer": ISSUER + "/"},                     # compared exactly
    {k: v for k, v in GOOD.items() if k != "issuer"},
    {**GOOD, "token_endpoint": "http://idp.example.test/token"},   # http off loopback
    {**GOOD, "jwks_uri": 7},
    {**GOOD, "authorization_endpoint": "https://user:pw@idp.example.test/auth"},
    ["not", "an", "object"],
])
def test_a_document_that_cannot_be_trusted_is_refused(document: Any) -> None:
    with pytest.raises(FetchFailed):
        ProviderMetadata.from_document(document, ISSUER)


def test_loopback_http_endpoints_are_accepted() -> None:
    local = "http://127.0.0.1:9000"
    assert ProviderMetadata.from_document({"issuer": local, "token_endpoint": f"{local}/token"}, local).token_endpoint
