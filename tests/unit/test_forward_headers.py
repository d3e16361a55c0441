"""Header filtering (proxy_headers.py), both ways: hop-by-hop, identity spoofing, X-Forwarded-*, request ids."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from multidict import CIMultiDict

from gateway.config import IdentityConfig
from gateway.forward import Target
from gateway.proxy_headers import (HOP_BY_HOP, HeaderPolicy, Peer, is_trusted, request_header_items,
                                   response_header_items)
from gateway.request_id import REQUEST_ID, pick_request_id
from gateway.errors import BadPath

POLICY = HeaderPolicy.from_config(IdentityConfig())
KEEP_AUTH = HeaderPolicy.from_config(IdentityConfig(strip_authorization=False))
UNTRUSTED = Peer("203.0.113.7", "http", trusted=False)
TRUSTED = Peer("10.0.0.2", "https", trusted=True)
ALICE = {"X-User-Id": "alice", "X-User-Roles": "user"}


def request_headers(pairs: list[tuple[str, str]], *, policy: HeaderPolicy = POLICY, peer: Peer = UNTRUSTED,
                    identity: dict[str, str] | None = None) -> CIMultiDict[str]:
    kept, _ = request_header_items(CIMultiDict(pairs), policy, peer, ALICE if identity is None else identity)
    return CIMultiDict(kept)


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE",
                                  "Trailer", "Upgrade", "Proxy-Authorization", "Host", "Expect"])
def test_hop_by_hop_request_headers_are_removed(name: str) -> None:
    out = request_headers([(name, "x"), ("X-Kept", "1")])
    assert name not in out   # Host too: aiohttp sends the upstream's own
    assert out["X-Kept"] == "1"


@pytest.mark.parametrize(("connection", "removed"), [
    ("X-Secret", ["X-Secret"]),
    ("close, X-A ,x-b", ["X-A", "X-B"]),
    ("keep-alive", []),
])
def test_headers_named_by_connection_are_removed(connection: str, removed: list[str]) -> None:
    out = request_headers([("Connection", connection), ("X-Secret", "1"), ("X-A", "1"), ("X-B", "1"),
                           ("X-Other", "1")])
    assert all(name not in out for name in removed)
    assert out["X-Other"] == "1"


def test_every_connection_header_counts() -> None:
    out = request_headers([("Connection", "X-A"), ("Connection", "X-B"), ("X-A", "1"), ("X-B", "1")])
    assert "X-A" not in out and "X-B" not in out


@pytest.mark.parametrize("named", ["X-User-Id", "x-request-id", "X-Forwarded-For", "X-Forwarded-Proto",
                                   "X-Forwarded-Host"])
def test_connection_cannot_remove_the_gateways_own_headers(named: str) -> None:
    out = request_headers([("Connection", named), ("Host", "gw.example.test")])
    assert out["X-User-Id"] == "alice"
    assert out[REQUEST_ID]
    assert out["X-Forwarded-For"] == UNTRUSTED.address
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "gw.example.test"


@pytest.mark.parametrize("spoofed", [
    [("X-User-Id", "mallory")],
    [("x-user-id", "mallory"), ("X-USER-ID", "eve")],
    [("X-User-Roles", "admin"), ("x-user-roles", "root")],
    [("X-User-Email", "ceo@example.test")],
])
def test_client_identity_headers_never_reach_the_upstream(spoofed: list[tuple[str, str]]) -> None:
    out = request_headers(spoofed)
    assert out.getall("X-User-Id") == ["alice"]
    assert out.getall("X-User-Roles") == ["user"]
    assert "X-User-Email" not in out


def test_identity_headers_are_stripped_on_public_routes_too() -> None:
    out = request_headers([("X-User-Id", "mallory"), ("X-User-Roles", "admin")], identity={})
    assert "X-User-Id" not in out and "X-User-Roles" not in out


def test_claims_and_assertion_headers_are_identity_headers() -> None:
    policy = HeaderPolicy.from_config(IdentityConfig(claims_header="X-Auth-Claims",
                                                     assertion_header="X-Auth-Assertion"))
    out = request_headers([("x-auth-claims", "e30"), ("X-Auth-Assertion", "forged")], policy=policy, identity={})
    assert "X-Auth-Claims" not in out and "X-Auth-Assertion" not in out


@pytest.mark.parametrize(("policy", "kept"), [(POLICY, False), (KEEP_AUTH, True)])
def test_authorization_is_stripped_only_when_configured(policy: HeaderPolicy, kept: bool) -> None:
    out = request_headers([("Authorization", "Bearer abc")], policy=policy)
    assert ("Authorization" in out) is kept


def test_untrusted_peer_cannot_set_forwarding_headers() -> None:
    out = request_headers([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
                           ("X-Forwarded-Host", "evil.test"), ("Forwarded", "for=1.2.3.4"),
                           ("Host", "gw.example.test")])
    assert out.getall("X-Forwarded-For") == ["203.0.113.7"]
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "gw.example.test"
    assert "Forwarded" not in out


def test_trusted_peer_chain_is_extended() -> None:
    out = request_headers([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8"),
                           ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.test"),
                           ("Forwarded", "for=1.2.3.4"), ("Host", "gw.internal")], peer=TRUSTED)
    assert out.getall("X-Forwarded-For") == ["1.2.3.4, 5.6.7.8, 10.0.0.2"]
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "app.test"
    assert out["Forwarded"] == "for=1.2.3.4"


def test_trusted_peer_without_headers_gets_defaults() -> None:
    out = request_headers([("Host", "gw.internal")], peer=TRUSTED)
    assert out["X-Forwarded-For"] == "10.0.0.2"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "gw.internal"


@pytest.mark.parametrize(("values", "kept"), [
    (["abc-123"], True),
    (["req.1:2_3"], True),
    (["a" * 128], True),
    (["a" * 129], False),
    ([""], False),
    (["bad id"], False),
    (["<script>"], False),
    (["ok", "ok2"], False),
    ([], False),
])
def test_request_id_is_kept_only_when_single_and_sane(values: list[str], kept: bool) -> None:
    rid = pick_request_id(values)
    if kept:
        assert rid == values[0]
    else:
        assert uuid.UUID(rid).version == 4


def test_request_id_appears_exactly_once() -> None:
    out = request_headers([("X-Request-Id", "a"), ("x-request-id", "b")])
    assert len(out.getall(REQUEST_ID)) == 1 and out[REQUEST_ID] not in ("a", "b")


def test_other_headers_keep_order_and_duplicates() -> None:
    out = request_headers([("X-Multi", "1"), ("Cookie", "a=1"), ("X-Multi", "2"), ("Content-Length", "5")])
    assert out.getall("X-Multi") == ["1", "2"]
    assert out["Cookie"] == "a=1" and out["Content-Length"] == "5"


def response_headers(pairs: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(response_header_items(pairs, HOP_BY_HOP))


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "TE",
                                  "Trailer", "Upgrade", "Proxy-Authenticate"])
def test_hop_by_hop_response_headers_are_removed(name: str) -> None:
    out = response_headers([(name, "x"), ("Content-Type", "text/plain")])
    assert name not in out and out["Content-Type"] == "text/plain"


def test_response_connection_named_headers_removed_and_cookies_kept() -> None:
    out = response_headers([("Connection", "X-Secret"), ("X-Secret", "1"),
                            ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert "X-Secret" not in out
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize(("address", "trusted"), [
    ("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("fd00::5", True), ("11.0.0.1", False),
    ("not-an-ip", False), (None, False),
])
def test_is_trusted(address: str | None, trusted: bool) -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert is_trusted(address, nets) is trusted
    assert is_trusted(address, []) is False


@pytest.mark.parametrize(("base", "path", "query", "url"), [
    ("http://h:1", "/a/b", "", "http://h:1/a/b"),
    ("http://h:1/", "/a", "x=1", "http://h:1/a?x=1"),
    ("http://h:1/base/", "/a%2Fb", "q=%20+&&z", "http://h:1/base/a%2Fb?q=%20+&&z"),
])
def test_target_url_keeps_path_and_query_bytes(base: str, path: str, query: str, url: str) -> None:
    assert str(Target.from_url(base).url_for(path, query)) == url


@pytest.mark.parametrize(("url", "host_header", "address", "tls"), [
    ("http://[::1]:9000/base/", "[::1]:9000", ("::1", 9000), False),
    ("http://localhost", "localhost", ("localhost", 80), False),
    ("http://Example.TEST:80/x", "example.test", ("example.test", 80), False),   # the default port is not said
    ("https://api.example.test:8443", "api.example.test:8443", ("api.example.test", 8443), True),
    ("https://api.example.test", "api.example.test", ("api.example.test", 443), True),
])
def test_target_knows_its_host_header_and_where_the_lean_client_connects(
        url: str, host_header: str, address: tuple[str, int], tls: bool) -> None:
    target = Target.from_url(url)
    assert (target.host_header, target.address, target.tls) == (host_header, address, tls)


@pytest.mark.parametrize("path", ["a", "/a b", "/a#b", "/a?b", "/a\r\nX: 1", "/é"])
def test_target_refuses_paths_that_are_not_request_targets(path: str) -> None:
    with pytest.raises(BadPath):
        Target.from_url("http://h:1").url_for(path, "")
