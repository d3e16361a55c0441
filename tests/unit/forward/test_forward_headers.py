"""Header filtering (forward/headers.py), both ways: hop-by-hop, identity spoofing, X-Forwarded-*, request ids."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from multidict import CIMultiDict

from gateway.config.load import AuthConfig, IdentityConfig
from gateway.errors import BadPath, BadRequest, UnknownTransferCoding
from gateway.forward.forwarder import Target
from gateway.forward.headers import (HOP_BY_HOP, HeaderPolicy, Peer, fold, is_loopback, is_trusted,
                                     request_header_items, response_header_items)
from gateway.forward.request_id import REQUEST_ID, pick_request_id
from gateway.steps.cookies import gateway_cookies

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
    out = request_headers([(name, "chunked" if name == "Transfer-Encoding" else "x"), ("X-Kept", "1")])
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
def test_authorization_and_its_dpop_proof_are_stripped_only_when_configured(policy: HeaderPolicy,
                                                                             kept: bool) -> None:
    out = request_headers([("Authorization", "DPoP abc"), ("dpop", "a.proof.jwt")], policy=policy)
    assert ("Authorization" in out) is kept and ("DPoP" in out) is kept


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
    assert out.getall("X-Forwarded-Proto") == ["https"]   # the proxy's, and no second one of the gateway's
    assert out.getall("X-Forwarded-Host") == ["app.test"]
    assert out["Forwarded"] == "for=1.2.3.4"


@pytest.mark.parametrize(("sent", "added"), [("X-Forwarded-Proto", "X-Forwarded-Host"),
                                             ("X-Forwarded-Host", "X-Forwarded-Proto")])
def test_a_trusted_peer_that_sets_one_of_proto_and_host_gets_the_gateways_other(sent: str, added: str) -> None:
    out = request_headers([(sent, "from-proxy"), ("Host", "gw.internal")], peer=TRUSTED)
    assert out.getall(sent) == ["from-proxy"]
    assert out.getall(added) == ["gw.internal" if added == "X-Forwarded-Host" else TRUSTED.scheme]


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
    out = request_headers([("X-Multi", "1"), ("Cookie", "a=1"), ("X-Multi", "2")])
    assert out.getall("X-Multi") == ["1", "2"]
    assert out["Cookie"] == "a=1"


# --- framing is the gateway's own (the smuggling finding: Connection naming Content-Length) ---------

def upstream_items(pairs: list[tuple[str, str]], body_length: int | None, *, policy: HeaderPolicy = POLICY,
                   peer: Peer = UNTRUSTED) -> CIMultiDict[str]:
    kept, _ = request_header_items(CIMultiDict(pairs), policy, peer, ALICE, body_length)
    return CIMultiDict(kept)


@pytest.mark.parametrize("client_length", [None, "5", "115", "0", "5, 5"])
@pytest.mark.parametrize("body_length", [None, 0, 115])
def test_content_length_is_the_gateways_own(client_length: str | None, body_length: int | None) -> None:
    pairs = [("Content-Length", client_length)] if client_length is not None else []
    out = upstream_items(pairs, body_length)
    expected = [] if body_length is None else [str(body_length)]
    assert out.getall("Content-Length", []) == expected


@pytest.mark.parametrize("named", ["Content-Length", "Transfer-Encoding", "Host", "Upgrade", "TE", "Connection",
                                   "X-Request-Id", "X-Forwarded-For", "X-User-Id", "X-User-Roles", "Cookie, X-User-Id",
                                   "content-length", "X_User_Id"])
def test_connection_naming_a_framing_gateway_or_identity_header_removes_nothing_of_the_gateways(named: str) -> None:
    out = upstream_items([("Connection", f"keep-alive, {named}"), ("Content-Length", "115"),
                          ("Host", "gw.example.test")], 115)
    assert out.getall("Content-Length") == ["115"]
    assert out.getall("X-User-Id") == ["alice"] and out.getall("X-User-Roles") == ["user"]
    assert out.getall("X-Forwarded-For") == [UNTRUSTED.address] and len(out.getall(REQUEST_ID)) == 1


@pytest.mark.parametrize("spelling", ["X_User_Id", "x_user_id", "X-User_Id", "x_USER-id"])
def test_identity_headers_spelled_with_underscores_never_pass(spelling: str) -> None:
    out = request_headers([(spelling, "root"), ("X_User_Roles", "admin"), ("x-user_roles", "admin")])
    assert [v for k, v in out.items() if k.lower().replace("_", "-") == "x-user-id"] == ["alice"]
    assert [v for k, v in out.items() if k.lower().replace("_", "-") == "x-user-roles"] == ["user"]


@pytest.mark.parametrize("spelling", ["Content_Length", "Transfer_Encoding", "X_Forwarded_For", "X_Real_IP",
                                      "X_Request_Id", "X_Original_URL"])
def test_other_spellings_of_owned_headers_never_pass(spelling: str) -> None:
    out = request_headers([(spelling, "1")], peer=TRUSTED)
    assert spelling not in out


def test_ordinary_headers_with_underscores_pass() -> None:
    out = request_headers([("X_Trace_Token", "t1")])
    assert out["X_Trace_Token"] == "t1"


ADDRESS_AND_URL_HEADERS = ["X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Original-URL", "X-Rewrite-URL",
                           "X-Original-URI", "X-Original-Method", "X-Forwarded-Uri", "X-Forwarded-Method",
                           "X-Forwarded-Server", "X-Forwarded-Ssl", "Forwarded"]


@pytest.mark.parametrize("name", ADDRESS_AND_URL_HEADERS)
def test_address_and_url_headers_only_from_a_trusted_proxy(name: str) -> None:
    assert name not in request_headers([(name, "x")])
    assert request_headers([(name, "x")], peer=TRUSTED)[name] == "x"


@pytest.mark.parametrize("coding", ["gzip, chunked", "chunked, chunked", "identity", "x"])
def test_a_transfer_coding_other_than_chunked_is_refused_with_501(coding: str) -> None:
    with pytest.raises(UnknownTransferCoding) as refused:
        request_headers([("Transfer-Encoding", coding)])
    assert refused.value.status == 501


def test_more_than_one_host_is_refused() -> None:
    with pytest.raises(BadRequest):
        request_headers([("Host", "a.test"), ("host", "b.test")])


COOKIE_POLICY = HeaderPolicy.from_config(IdentityConfig(), {"refresh_token", "access_token", "csrf_token"})


@pytest.mark.parametrize(("sent", "forwarded"), [
    ("access_token=eyJ.x.y; theme=dark", ["theme=dark"]),
    ("theme=dark; csrf_token=abc;refresh_token=r", ["theme=dark"]),
    ("access_token=eyJ.x.y", []),
    ("my_access_token=1; access_token_x=2", ["my_access_token=1; access_token_x=2"]),
    ("theme=dark", ["theme=dark"]),
    # A value may hold "=" (base64 padding, or a client's doing): the name ends at the first one.
    ("refresh_token=abc==; theme=a=b", ["theme=a=b"]),
    ("access_token=x=y=z", []),
])
def test_the_gateways_cookies_are_removed_from_cookie(sent: str, forwarded: list[str]) -> None:
    assert request_headers([("Cookie", sent)], policy=COOKIE_POLICY).getall("Cookie", []) == forwarded


def test_gateway_cookies_follow_browser_mode() -> None:
    assert gateway_cookies(AuthConfig()) == {"refresh_token"}
    assert gateway_cookies(AuthConfig(access_cookie=True)) == {"refresh_token", "access_token", "csrf_token"}


@pytest.mark.parametrize("name", ["X-User-Id", "x_user_roles", "X-Forwarded-For", "Content-Length", "X-Real-IP"])
def test_fold_matches_the_policys_names(name: str) -> None:
    assert fold(name) in POLICY.owned


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


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LocalHost", True), ("127.0.0.1", True), ("127.9.8.7", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("[::]", False), ("10.0.0.1", False),
    ("localhost.example.test", False), ("not-an-ip", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    """Whether the admin port's bind is loopback only (server/serve.py warns about an unguarded admin port
    otherwise)."""
    assert is_loopback(host) is loopback


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
