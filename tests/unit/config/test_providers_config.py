"""auth.providers, auth.redirect_allowlist / public_url and trusted issuers found by discovery: what
check-config accepts, and every mistake named at its key with file:line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import GatewayConfig, GithubProviderConfig, OidcProviderConfig
from tests.unit.config.config_checks import problems_of

CORP = {"issuer": "https://idp.example.test", "client_id": "gw", "client_secret": "s3cret"}


def test_providers_of_both_types_load(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(auth={"providers": {
        "corp": {**CORP, "roles": {"claim": "groups", "map": {"admins": ["admin"]}}},
        "public": {"issuer": "http://127.0.0.1:9000", "client_id": "p", "client_auth": "none"},
        "github": {"type": "github", "client_id": "g", "client_secret": "x"}},
        "redirect_allowlist": ["https://APP.example.test:443"], "public_url": "https://gw.example.test"})
    corp, github = cfg.auth.providers["corp"], cfg.auth.providers["github"]
    assert isinstance(corp, OidcProviderConfig) and corp.scopes == ("openid", "email", "profile")
    assert corp.discovery_url == "https://idp.example.test/.well-known/openid-configuration"
    assert isinstance(github, GithubProviderConfig) and github.client_auth == "client_secret_post"
    assert cfg.auth.redirect_allowlist == ("https://app.example.test",)


@pytest.mark.parametrize("provider, key", [
    ({**CORP, "issuer": "http://idp.example.test"}, "auth.providers.corp.issuer"),       # http off loopback
    ({**CORP, "bogus": 1}, "auth.providers.corp.bogus"),                                   # unknown key
    ({k: v for k, v in CORP.items() if k != "client_secret"}, "auth.providers.corp.client_secret"),
    ({**CORP, "client_auth": "none"}, "auth.providers.corp.client_secret"),               # a public client's secret
    ({**CORP, "scopes": ["email"]}, "auth.providers.corp.scopes"),                        # no openid
    ({**CORP, "roles": {"claim": "groups", "map": {"x": ["nosuch"]}}}, "auth.providers.corp.roles.map.x"),
    ({**CORP, "roles": {"default": ["nosuch"]}}, "auth.providers.corp.roles.default"),
    ({**CORP, "roles": {"map": {"x": ["admin"]}}}, "auth.providers.corp.roles.claim"),
])
def test_a_provider_mistake_is_named_at_its_key(write_config: Callable[..., Path], provider: dict[str, Any],
                                                key: str) -> None:
    found = problems_of(write_config(auth={"providers": {"corp": provider}}))
    assert key in [p.key for p in found], found
    assert all(p.line for p in found)


def test_a_missing_secret_is_named_beside_other_mistakes(write_config: Callable[..., Path]) -> None:
    corp = {"issuer": "https://idp.example.test", "client_id": "gw", "bogus": 1}
    keys = [p.key for p in problems_of(write_config(auth={"providers": {"corp": corp}}))]
    assert "auth.providers.corp.client_secret" in keys and "auth.providers.corp.bogus" in keys


@pytest.mark.parametrize("github, key", [
    ({"client_auth": "none"}, "auth.providers.gh.client_auth"),        # GitHub requires the secret
    ({"scopes": ["read:user"]}, "auth.providers.gh.scopes"),           # no way to read the verified address
])
def test_a_github_provider_needs_its_secret_and_the_email_scope(write_config: Callable[..., Path],
                                                                github: dict[str, Any], key: str) -> None:
    provider = {"type": "github", "client_id": "g", "client_secret": "s", **github}
    assert key in [p.key for p in problems_of(write_config(auth={"providers": {"gh": provider}}))]


@pytest.mark.parametrize("auth, key", [
    ({"providers": {"Corp": CORP}}, "auth.providers.Corp"),
    ({"redirect_allowlist": ["https://app.example.test/path"]}, "auth.redirect_allowlist[0]"),
    ({"redirect_allowlist": ["http://app.example.test"]}, "auth.redirect_allowlist[0]"),
    ({"public_url": "https://gw.example.test/"}, "auth.public_url"),
])
def test_browser_settings_are_checked(write_config: Callable[..., Path], auth: dict[str, Any], key: str) -> None:
    assert key in [p.key for p in problems_of(write_config(auth=auth))]


def test_a_trusted_issuer_may_be_found_by_discovery(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(tokens={"trusted_issuers": [{"issuer": "https://idp.example.test", "subject_prefix": "idp:"},
                                                  {"issuer": "corp", "discovery_url": "https://c.test/.well-known/x"}]})
    by_issuer, named = cfg.tokens.trusted_issuers
    assert by_issuer.metadata_url == "https://idp.example.test/.well-known/openid-configuration"
    assert named.metadata_url == "https://c.test/.well-known/x" and by_issuer.subject_prefix == "idp:"


@pytest.mark.parametrize("issuer, key", [
    ({"issuer": "not-a-url"}, "tokens.trusted_issuers[0].issuer"),
    ({"issuer": "x", "jwks_uri": "http://idp.example.test/jwks"}, "tokens.trusted_issuers[0].jwks_uri"),
])
def test_a_trusted_issuer_needs_a_secure_way_to_its_keys(write_config: Callable[..., Path], issuer: dict[str, Any],
                                                         key: str) -> None:
    assert key in [p.key for p in problems_of(write_config(tokens={"trusted_issuers": [issuer]}))]
