"""The edge at the byte level: hostile requests sent as exact bytes to the real app, and what a raw
upstream received, parsed strictly (edge_kit.py). Every case runs on both upstream clients.

The invariant (DESIGN.md, "What the upstream receives is decided by the gateway alone"): for every
request the gateway forwards, the upstream sees exactly one request, with the method, target, body
and identity the gateway decided, framed by the gateway, with no hop-by-hop, identity or forwarding
header of the client's; a refused request never reaches the upstream; nothing is left over on an
upstream connection; and no bytes of one client's request or answer ever reach another client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config.load import GatewayConfig

from ..edge_kit import (HOST, Answer, Either, Expect, Fwd, RawClient, RecordingUpstream, Refuse, chunked,
                       connection_values, edge_sections, exchange, fill, judge_answers, length, match_upstream,
                       parse_stream, recording_upstream, req, serve_gateway)

pytestmark = pytest.mark.integration

CSRF = "c" * 43   # the shape of secrets.token_urlsafe(32)


# -- the table ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    expect: Sequence[Expect]
    # After a refusal the gateway may close the connection (a refused request's unread body is not
    # read): the requests after it then get no answer, and must not reach the upstream either.
    may_close_after_refusal: bool = False


AUTH_USER = "Authorization: Bearer {USER}"
AUTH_ADMIN = "Authorization: Bearer {ADMIN}"
SMUGGLED = (b"DELETE /api/admin/users/42 HTTP/1.1\r\nHost: gw.test\r\nX-User-Id: root\r\nX-User-Roles: admin\r\n"
            b"Content-Length: 0\r\n\r\n")
HELLO = b"hello"
GZIPPED = gzip.compress(HELLO, mtime=0)
ALL_NAMED = ("keep-alive, Content-Length, Transfer-Encoding, Host, Upgrade, TE, X-Request-Id, X-Forwarded-For, "
             "X-Forwarded-Proto, X-Forwarded-Host, X-User-Id, X-User-Roles, X-Auth-Claims, Authorization, Cookie")
FORWARDING_SPOOFS = [
    "X-Real-IP: 10.0.0.1", "X-Forwarded-Port: 8443", "X-Forwarded-Prefix: /api/admin",
    "X-Original-URL: /api/admin/users", "X-Rewrite-URL: /api/admin/users", "X-Original-URI: /api/admin/users",
    "X-Original-Method: DELETE", "X-Forwarded-Uri: /api/admin/users", "X-Forwarded-Method: DELETE",
    "Forwarded: for=10.0.0.1;proto=https;host=admin.internal", "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-Host: admin.internal", "X-Forwarded-Proto: https",
]


def _spoof_id(line: str) -> str:
    return "forwarding-" + line.split(":")[0].lower()


CASES: list[Case] = [
    # -- a client's Connection header naming framing, gateway and identity headers ----------------
    Case("connection-names-content-length",
         req("POST /api/public/c1 HTTP/1.1", "Connection: keep-alive, Content-Length", length(SMUGGLED), body=SMUGGLED),
         [Either(Fwd("POST", "/api/public/c1", SMUGGLED))]),
    Case("connection-names-content-length-in-a-second-connection-header",
         req("POST /api/public/c2 HTTP/1.1", "Connection: keep-alive", "connection:  CONTENT-LENGTH ",
             length(SMUGGLED), body=SMUGGLED),
         [Either(Fwd("POST", "/api/public/c2", SMUGGLED))]),
    Case("connection-names-content-length-on-an-authenticated-route",
         req("PUT /api/admin/c3 HTTP/1.1", AUTH_ADMIN, "Connection: Content-Length", length(SMUGGLED), body=SMUGGLED),
         [Either(Fwd("PUT", "/api/admin/c3", SMUGGLED, "admin"))]),
    Case("connection-names-transfer-encoding",
         req("POST /api/public/c4 HTTP/1.1", "Connection: Transfer-Encoding", "Transfer-Encoding: chunked",
             body=chunked(SMUGGLED[:30], SMUGGLED[30:])),
         [Either(Fwd("POST", "/api/public/c4", SMUGGLED))]),
    Case("connection-names-host",
         req("GET /api/public/c5 HTTP/1.1", "Connection: Host"),
         [Fwd("GET", "/api/public/c5")]),
    Case("connection-names-te",
         req("GET /api/public/c6 HTTP/1.1", "Connection: TE", "TE: trailers"),
         [Fwd("GET", "/api/public/c6")]),
    Case("connection-names-upgrade-h2c",
         req("GET /api/public/c7 HTTP/1.1", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
             "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
         [Either(Fwd("GET", "/api/public/c7"))]),
    Case("connection-names-x-request-id",
         req("GET /api/public/c8 HTTP/1.1", "Connection: X-Request-Id", "X-Request-Id: client-chosen-1"),
         [Fwd("GET", "/api/public/c8")]),
    Case("connection-names-x-forwarded-headers",
         req("GET /api/public/c9 HTTP/1.1", "Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"),
         [Fwd("GET", "/api/public/c9")]),
    Case("connection-names-identity-headers",
         req("GET /api/orders/c10 HTTP/1.1", AUTH_USER, "Connection: X-User-Id, X-User-Roles, X-Auth-Claims"),
         [Fwd("GET", "/api/orders/c10", who="user")]),
    Case("connection-names-authorization-and-cookie",
         req("GET /api/orders/c11 HTTP/1.1", AUTH_USER, "Connection: Authorization, Cookie",
             "Cookie: theme=dark; refresh_token=r1"),
         [Fwd("GET", "/api/orders/c11", who="user")]),
    Case("connection-names-everything-at-once",
         req("POST /api/orders/c12 HTTP/1.1", AUTH_ADMIN, f"Connection: {ALL_NAMED}", length(SMUGGLED),
             body=SMUGGLED),
         [Either(Fwd("POST", "/api/orders/c12", SMUGGLED, "admin"))]),
    Case("connection-names-underscore-spellings",
         req("POST /api/orders/c13 HTTP/1.1", AUTH_ADMIN, "Connection: Content_Length, X_User_Id, x-user_roles",
             length(HELLO), body=HELLO),
         [Fwd("POST", "/api/orders/c13", HELLO, "admin")]),
    Case("connection-names-an-ordinary-header",
         req("GET /api/public/c14 HTTP/1.1", "Connection: keep-alive, X-Trace, cache-control", "X-Trace: 1",
             "Cache-Control: no-cache", "X-Kept: yes"),
         [Fwd("GET", "/api/public/c14")]),
    # -- identity and gateway headers in other spellings ----------------------------------------
    Case("underscore-identity-on-a-public-route",
         req("GET /api/public/u1 HTTP/1.1", "X_User_Id: root", "X_User_Roles: admin", "x-user_roles: admin",
             "X-USER-ID: root", "x-User_iD: root", "X_Auth_Claims: e30"),
         [Fwd("GET", "/api/public/u1")]),
    Case("underscore-identity-on-an-authenticated-route",
         req("GET /api/orders/u2 HTTP/1.1", AUTH_USER, "X_User_Id: root", "x-user_roles: admin",
             "X_AUTH_CLAIMS: e30"),
         [Fwd("GET", "/api/orders/u2", who="user")]),
    Case("identity-headers-spelled-exactly",
         req("POST /api/orders/u3 HTTP/1.1", "X-User-Id: root", AUTH_USER, "X-User-Roles: admin",
             "X-Auth-Claims: e30", length(HELLO), body=HELLO),
         [Fwd("POST", "/api/orders/u3", HELLO, "user")]),
    Case("underscore-gateway-headers",
         req("GET /api/public/u4 HTTP/1.1", "X_Forwarded_For: 10.0.0.1", "X_Forwarded_Host: admin.internal",
             "X_Forwarded_Proto: https", "X_Request_Id: chosen", "x_real_ip: 10.0.0.2", "X_Original_URL: /api/admin"),
         [Fwd("GET", "/api/public/u4")]),
    # -- forwarding headers from an untrusted peer --------------------------------------------
    *[Case(_spoof_id(line), req("GET /api/public/f HTTP/1.1", line), [Fwd("GET", "/api/public/f")])
      for line in FORWARDING_SPOOFS],
    # -- the gateway's own cookies ----------------------------------------------------------------
    Case("cookies-of-the-gateway-beside-a-bearer-token",
         req("GET /api/orders/k1 HTTP/1.1", AUTH_USER,
             "Cookie: theme=dark; access_token={ADMIN}; csrf_token=abc; refresh_token=xyz; lang=en"),
         [Fwd("GET", "/api/orders/k1", who="user")]),
    Case("access-cookie-is-the-token",
         req("GET /api/orders/k2 HTTP/1.1", "Cookie: theme=dark; access_token={USER}"),
         [Fwd("GET", "/api/orders/k2", who="user")]),
    Case("access-cookie-on-an-unsafe-method-with-csrf",
         req("POST /api/orders/k3 HTTP/1.1", f"Cookie: access_token={{USER}}; csrf_token={CSRF}",
             f"X-CSRF-Token: {CSRF}", length(HELLO), body=HELLO),
         [Fwd("POST", "/api/orders/k3", HELLO, "user")]),
    Case("access-cookie-on-an-unsafe-method-without-csrf",
         req("POST /api/orders/k4 HTTP/1.1", "Cookie: access_token={USER}", length(HELLO), body=HELLO),
         [Refuse(frozenset({403}))]),
    Case("gateway-cookies-in-a-second-cookie-header",
         req("GET /api/public/k5 HTTP/1.1", "Cookie: theme=dark", "Cookie: refresh_token=xyz; csrf_token=abc"),
         [Fwd("GET", "/api/public/k5")]),
    Case("gateway-cookies-without-spaces",
         req("GET /api/public/k6 HTTP/1.1", "Cookie: a=1;refresh_token=x;access_token=y;csrf_token=z"),
         [Fwd("GET", "/api/public/k6")]),
    # -- Content-Length and Transfer-Encoding -----------------------------------------------------
    Case("content-length-and-transfer-encoding",
         req("POST /api/public/t1 HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked", body=chunked(HELLO)),
         [Either(Fwd("POST", "/api/public/t1", HELLO))]),
    Case("transfer-encoding-and-content-length",
         req("POST /api/public/t2 HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 15", body=chunked(HELLO)),
         [Either(Fwd("POST", "/api/public/t2", HELLO))]),
    Case("transfer-encoding-chunked-then-gzip",
         req("POST /api/public/t3 HTTP/1.1", "Transfer-Encoding: chunked, gzip", body=chunked(HELLO)),
         [Refuse()]),
    Case("transfer-encoding-gzip-then-chunked",
         req("POST /api/public/t4 HTTP/1.1", "Transfer-Encoding: gzip, chunked", body=chunked(GZIPPED)),
         [Refuse(frozenset({400, 501}))]),   # RFC 9112 6.1: a coding the gateway does not decode
    Case("transfer-encoding-chunked-then-identity",
         req("POST /api/public/t5 HTTP/1.1", "Transfer-Encoding: chunked, identity", body=chunked(HELLO)),
         [Refuse()]),
    Case("transfer-encoding-identity-with-content-length",
         req("POST /api/public/t6 HTTP/1.1", "Transfer-Encoding: identity", "Content-Length: 5", body=HELLO),
         [Refuse()]),
    Case("transfer-encoding-in-capitals",
         req("POST /api/public/t7 HTTP/1.1", "Transfer-Encoding: CHUNKED", body=chunked(HELLO)),
         [Either(Fwd("POST", "/api/public/t7", HELLO))]),
    Case("transfer-encoding-twice",
         req("POST /api/public/t8 HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
             body=chunked(HELLO)),
         [Either(Fwd("POST", "/api/public/t8", HELLO))]),
    Case("transfer-encoding-with-space-before-colon",
         req("POST /api/public/t9 HTTP/1.1", "Transfer-Encoding : chunked", body=chunked(HELLO)),
         [Refuse()]),
    Case("transfer-encoding-xchunked",
         req("POST /api/public/t10 HTTP/1.1", "Transfer-Encoding: xchunked", body=chunked(HELLO)),
         [Refuse()]),
    Case("transfer-encoding-after-a-vertical-tab",
         req("POST /api/public/t11 HTTP/1.1", "Transfer-Encoding: \x0bchunked", body=chunked(HELLO)),
         [Refuse()]),
    Case("transfer-encoding-after-a-tab",
         req("POST /api/public/t12 HTTP/1.1", "Transfer-Encoding:\tchunked", body=chunked(HELLO)),
         [Either(Fwd("POST", "/api/public/t12", HELLO))]),
    Case("content-length-twice-the-same",
         req("POST /api/public/l1 HTTP/1.1", "Content-Length: 5", "Content-Length: 5", body=HELLO),
         [Either(Fwd("POST", "/api/public/l1", HELLO))]),
    Case("content-length-twice-conflicting",
         req("POST /api/public/l2 HTTP/1.1", "Content-Length: 5", "Content-Length: 6", body=HELLO + b"!"),
         [Refuse()]),
    Case("content-length-list-the-same",
         req("POST /api/public/l3 HTTP/1.1", "Content-Length: 5, 5", body=HELLO),
         [Either(Fwd("POST", "/api/public/l3", HELLO))]),
    Case("content-length-list-conflicting",
         req("POST /api/public/l4 HTTP/1.1", "Content-Length: 5, 6", body=HELLO + b"!"),
         [Refuse()]),
    Case("content-length-with-plus-sign",
         req("POST /api/public/l5 HTTP/1.1", "Content-Length: +5", body=HELLO),
         [Refuse()]),
    Case("content-length-negative",
         req("POST /api/public/l6 HTTP/1.1", "Content-Length: -5", body=HELLO),
         [Refuse()]),
    Case("content-length-in-hex",
         req("POST /api/public/l7 HTTP/1.1", "Content-Length: 0x5", body=HELLO),
         [Refuse()]),
    Case("content-length-with-a-leading-space",
         req("POST /api/public/l8 HTTP/1.1", "Content-Length:  5", body=HELLO),
         [Either(Fwd("POST", "/api/public/l8", HELLO))]),
    Case("content-length-with-trailing-junk",
         req("POST /api/public/l9 HTTP/1.1", "Content-Length: 5 x", body=HELLO),
         [Refuse()]),
    Case("content-length-that-overflows",
         req("POST /api/public/l10 HTTP/1.1", "Content-Length: 18446744073709551621", body=HELLO),
         [Refuse()]),
    Case("body-longer-than-content-length-carries-a-request-without-token",
         req("POST /api/public/l11 HTTP/1.1", "Content-Length: 5",
             body=HELLO + req("GET /api/admin/users HTTP/1.1", "X-User-Id: root")),
         [Fwd("POST", "/api/public/l11", HELLO), Refuse(frozenset({401}))]),
    Case("body-longer-than-content-length-carries-a-public-request",
         req("POST /api/public/l12 HTTP/1.1", "Content-Length: 5",
             body=HELLO + req("GET /api/public/l12b HTTP/1.1", "X-User-Id: root")),
         [Fwd("POST", "/api/public/l12", HELLO), Fwd("GET", "/api/public/l12b")]),
    Case("get-with-a-body",
         req("GET /api/public/l13 HTTP/1.1", length(HELLO), body=HELLO),
         [Either(Fwd("GET", "/api/public/l13", HELLO))]),
    Case("chunk-size-with-junk",
         req("POST /api/public/h1 HTTP/1.1", "Transfer-Encoding: chunked", body=b"5x\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunk-size-negative",
         req("POST /api/public/h2 HTTP/1.1", "Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunk-size-with-0x",
         req("POST /api/public/h3 HTTP/1.1", "Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunk-size-that-overflows",
         req("POST /api/public/h4 HTTP/1.1", "Transfer-Encoding: chunked",
             body=b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunk-shorter-than-its-size",
         req("POST /api/public/h5 HTTP/1.1", "Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunk-extension",
         req("POST /api/public/h6 HTTP/1.1", "Transfer-Encoding: chunked",
             body=b"5;name=value\r\nhello\r\n0\r\n\r\n"),
         [Either(Fwd("POST", "/api/public/h6", HELLO))]),
    Case("chunk-extension-with-a-bare-lf",
         req("POST /api/public/h7 HTTP/1.1", "Transfer-Encoding: chunked", body=b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
         [Refuse()]),
    Case("chunked-trailer-naming-identity",
         req("POST /api/public/h8 HTTP/1.1", "Transfer-Encoding: chunked", "Trailer: X-User-Id",
             body=b"5\r\nhello\r\n0\r\nX-User-Id: root\r\nX-User-Roles: admin\r\n\r\n"),
         [Either(Fwd("POST", "/api/public/h8", HELLO))]),
    Case("chunked-with-bare-lf-line-ends",
         req("POST /api/public/h9 HTTP/1.1", "Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n"),
         [Either(Fwd("POST", "/api/public/h9", HELLO))]),
    Case("chunked-body-on-an-authenticated-route",
         req("PATCH /api/admin/h10 HTTP/1.1", AUTH_ADMIN, "Transfer-Encoding: chunked",
             body=chunked(b"a" * 1000, b"b" * 3000, b"c")),
         [Fwd("PATCH", "/api/admin/h10", b"a" * 1000 + b"b" * 3000 + b"c", "admin")]),
    Case("large-chunked-body-beyond-the-buffer",
         req("POST /api/public/h11 HTTP/1.1", "Transfer-Encoding: chunked", body=chunked(*[b"z" * 20000] * 5)),
         [Fwd("POST", "/api/public/h11", b"z" * 100000)]),
    Case("large-body-with-content-length",
         req("POST /api/public/h12 HTTP/1.1", length(b"y" * 100000), body=b"y" * 100000),
         [Fwd("POST", "/api/public/h12", b"y" * 100000)]),
    # -- obs-fold and malformed lines ------------------------------------------------------------
    Case("obs-fold-in-an-ordinary-header",
         req("GET /api/public/o1 HTTP/1.1", "X-Note: a", " b"),
         [Either(Fwd("GET", "/api/public/o1"))]),
    Case("obs-fold-carrying-an-identity-header",
         req("GET /api/public/o2 HTTP/1.1", "X-Note: a", "\tX-User-Id: root"),
         [Either(Fwd("GET", "/api/public/o2"))]),
    Case("whitespace-line-before-the-first-header",
         b"GET /api/public/o3 HTTP/1.1\r\n X-User-Id: root\r\nHost: gw.test\r\n\r\n",
         [Either(Fwd("GET", "/api/public/o3"))]),
    Case("obs-fold-in-content-length",
         req("POST /api/public/o4 HTTP/1.1", "Content-Length:", " 5", body=HELLO),
         [Either(Fwd("POST", "/api/public/o4", HELLO))]),
    Case("space-before-colon-in-an-identity-header",
         req("GET /api/public/o5 HTTP/1.1", "X-User-Id : root"),
         [Refuse()]),
    Case("control-byte-in-a-value",
         req("GET /api/public/o6 HTTP/1.1", "X-Note: a\x01b"),
         [Either(Fwd("GET", "/api/public/o6"))]),
    Case("nul-in-a-value",
         req("GET /api/public/o7 HTTP/1.1", "X-Note: a\x00b"),
         [Either(Fwd("GET", "/api/public/o7"))]),
    Case("bare-cr-in-a-value",
         req("GET /api/public/o8 HTTP/1.1", "X-Note: a\rX-User-Id: root"),
         [Either(Fwd("GET", "/api/public/o8"))]),
    Case("bare-lf-line-ends",
         b"GET /api/public/o9 HTTP/1.1\nHost: gw.test\nX-User-Id: root\n\n",
         [Either(Fwd("GET", "/api/public/o9"))]),
    Case("request-line-with-a-fourth-part",
         req("GET /api/public/o10 HTTP/1.1 extra"),
         [Refuse()]),
    Case("header-line-longer-than-the-limit",
         req("GET /api/public/o11 HTTP/1.1", "X-Big: " + "a" * 20000),
         [Refuse()]),
    # -- duplicate and conflicting headers, odd request targets ------------------------------------
    Case("two-host-headers",
         req("GET /api/public/d1 HTTP/1.1", "Host: admin.internal"),
         [Refuse()]),
    Case("two-host-headers-the-same",
         req("GET /api/public/d2 HTTP/1.1", f"Host: {HOST}"),
         [Refuse()]),
    Case("two-authorization-headers",
         req("GET /api/admin/d3 HTTP/1.1", AUTH_USER, AUTH_ADMIN),
         [Refuse(frozenset({400, 401}))]),
    Case("two-authorization-headers-the-same",
         req("GET /api/admin/d4 HTTP/1.1", AUTH_ADMIN, AUTH_ADMIN),
         [Refuse(frozenset({400, 401}))]),
    Case("absolute-form-target",
         req("GET http://admin.internal/api/public/d5 HTTP/1.1"),
         [Either(Fwd("GET", "/api/public/d5", client_host=(HOST, "admin.internal")))]),
    Case("no-host-header",
         req("GET /api/public/d6 HTTP/1.1", host=None),
         [Either(Fwd("GET", "/api/public/d6", client_host=(None,)))]),
    Case("http-1.0-request",
         req("GET /api/public/d7 HTTP/1.0", host=None),
         [Fwd("GET", "/api/public/d7", client_host=(None,))]),
    Case("expect-100-continue-forwarded",
         req("POST /api/public/d8 HTTP/1.1", "Expect: 100-continue", length(HELLO), body=HELLO),
         [Fwd("POST", "/api/public/d8", HELLO)]),
    Case("non-ascii-bytes-in-a-value",
         req("GET /api/public/d9 HTTP/1.1", "X-Note: caf\xe9"),
         [Either(Fwd("GET", "/api/public/d9"))]),
    Case("non-token-header-name",
         req("GET /api/public/d10 HTTP/1.1", "X-User\xe9-Id: root"),
         [Refuse()]),
    # llhttp refuses bytes after a "Connection: close" request, and aiohttp answers that with 400 (the
    # whole read refused, the first request too): a refusal, not a leak. The second never goes anywhere.
    Case("connection-close-then-a-pipelined-request",
         req("GET /api/public/d11 HTTP/1.1", "Connection: close") + req("GET /api/public/d12 HTTP/1.1"),
         [Either(Fwd("GET", "/api/public/d11"))]),
    # -- the target the upstream receives is the normalised one ---------------------------------------
    Case("query-string-kept-as-sent",
         req("GET /api/public/n1?x=1&y=%2F&z=a+b HTTP/1.1"),
         [Fwd("GET", "/api/public/n1?x=1&y=%2F&z=a+b")]),
    Case("dot-segments-and-double-slashes",
         req("GET /api/public/./n2//a/../b HTTP/1.1"),
         [Either(Fwd("GET", "/api/public/n2/b"))]),
    Case("encoded-unreserved-characters",
         req("GET /api/p%75blic/n3 HTTP/1.1"),
         [Either(Fwd("GET", "/api/public/n3"))]),
    # No fragment in a request-target (RFC 9112 3.2): refused.
    Case("fragment-in-the-target",
         req("GET /api/public/n4#frag HTTP/1.1"),
         [Refuse(frozenset({400}))]),
    Case("fragment-that-climbs-into-admin",
         req("GET /api/public/n5#/../../admin/users HTTP/1.1"),
         [Refuse(frozenset({400, 401}))]),
    Case("semicolon-parameter-in-front-of-admin",
         req("GET /api/admin;x/users HTTP/1.1"),
         [Refuse(frozenset({400, 401}))]),
    Case("dot-dot-semicolon",
         req("GET /api/public/..;/admin/users HTTP/1.1"),
         [Refuse(frozenset({400, 401}))]),
    # -- refusals never reach the upstream ----------------------------------------------------------
    Case("no-token", req("GET /api/admin/r1 HTTP/1.1"), [Refuse(frozenset({401}))]),
    Case("role-missing", req("GET /api/admin/r2 HTTP/1.1", AUTH_USER), [Refuse(frozenset({403}))]),
    Case("no-route", req("GET /nowhere HTTP/1.1", AUTH_ADMIN), [Refuse(frozenset({404}))]),
    Case("trace", req("TRACE /api/public/r4 HTTP/1.1"), [Refuse()]),
    Case("connect", req("CONNECT admin.internal:443 HTTP/1.1"), [Refuse()]),
    Case("dot-dot-climbs-into-admin", req("GET /api/public/../admin/users HTTP/1.1"),
         [Refuse(frozenset({400, 401}))]),
    Case("encoded-dot-dot-slash", req("GET /api/public/%2e%2e%2fadmin/users HTTP/1.1"), [Refuse(frozenset({400}))]),
    Case("refused-with-expect-100-continue",
         req("POST /api/admin/r8 HTTP/1.1", "Expect: 100-continue", length(HELLO), body=HELLO),
         [Refuse(frozenset({401}))]),
    # -- pipelined requests after refusals ---------------------------------------------------------
    Case("pipelined-after-refusals",
         req("GET /api/admin/p1 HTTP/1.1") + req("GET /api/public/p2 HTTP/1.1")
         + req("GET /api/orders/p3 HTTP/1.1", AUTH_USER) + req("GET /nowhere HTTP/1.1")
         + req("GET /api/admin/p5 HTTP/1.1", AUTH_USER) + req("POST /api/public/p6 HTTP/1.1", length(HELLO), body=HELLO)
         + req("DELETE /api/admin/p7 HTTP/1.1", AUTH_ADMIN, "X-User-Id: root"),
         [Refuse(frozenset({401})), Fwd("GET", "/api/public/p2"), Fwd("GET", "/api/orders/p3", who="user"),
          Refuse(frozenset({404})), Refuse(frozenset({403})), Fwd("POST", "/api/public/p6", HELLO),
          Fwd("DELETE", "/api/admin/p7", who="admin")]),
    Case("pipelined-after-a-refused-body-that-holds-a-request",
         req("POST /api/admin/p8 HTTP/1.1", length(req("GET /api/public/smuggled HTTP/1.1")),
             body=req("GET /api/public/smuggled HTTP/1.1")) + req("GET /api/public/p9 HTTP/1.1"),
         [Refuse(frozenset({401})), Fwd("GET", "/api/public/p9")],
         may_close_after_refusal=True),
    Case("pipelined-after-a-framing-error",
         req("POST /api/public/p10 HTTP/1.1", "Content-Length: +5", body=HELLO) + req("GET /api/public/p11 HTTP/1.1"),
         [Refuse(closes=True)]),
    Case("pipelined-after-a-conflicting-length",
         req("POST /api/public/p12 HTTP/1.1", "Content-Length: 5", "Content-Length: 30",
             body=HELLO + req("GET /api/public/p13 HTTP/1.1", host="x")),
         [Refuse(closes=True)]),
]


@pytest.fixture
def tokens(mint: Callable[..., str]) -> dict[bytes, bytes]:
    return {b"{USER}": mint(sub="alice", roles=["user"]).encode(),
            b"{ADMIN}": mint(sub="boss", roles=["admin"]).encode()}


@pytest.fixture(params=["lean", "aiohttp"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Which upstream client the gateway uses: every case runs on both."""
    return str(request.param)


@pytest.fixture
def edge_config(make_config: Callable[..., GatewayConfig]) -> Callable[..., Any]:
    async def make(upstream: RecordingUpstream, **overrides: Any) -> GatewayConfig:
        return await asyncio.to_thread(make_config, **edge_sections(upstream.url, **overrides))   # file I/O

    return make


async def run_case(case: Case, raw: bytes, cfg: GatewayConfig, up: RecordingUpstream, lean: bool) -> list[str]:
    async with serve_gateway(cfg, lean=lean) as gw:
        client = await RawClient.connect(gw.port)
        try:
            await client.send(raw)
            answers = await client.read_answers(len(case.expect))
            closes = [e for e in case.expect if isinstance(e, Refuse) and e.closes]
            extra: list[Answer] = []
            if closes and not client.closed:   # it must close: read on until it does (or the bound)
                extra = await client.read_answers(1)
        finally:
            await client.close()
    await up.wait_all_closed()   # the gateway is gone: every byte it sent is in
    problems, forwarded = judge_answers(case.expect, answers, client, case.may_close_after_refusal)
    if len(forwarded) == 1 and len(case.expect) == 1:   # one request: its Connection header's list applies
        forwarded = [dataclasses.replace(forwarded[0], client_connection=connection_values(raw))]
    problems += match_upstream(forwarded, up)
    if closes and (extra or not client.closed):
        problems.append(f"the connection stayed open after a framing error (then: {extra!r})")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request_reaches_the_upstream_once_as_decided_or_not_at_all(
        case: Case, client_kind: str, tokens: dict[bytes, bytes], edge_config: Callable[..., Any]) -> None:
    async with recording_upstream() as up:
        cfg = await edge_config(up)
        problems = await run_case(case, fill(case.raw, tokens), cfg, up, lean=client_kind == "lean")
    assert not problems, "\n".join(problems)


# -- the known attack, and what it does to the next user on a pooled connection ----------------------

async def test_connection_naming_content_length_cannot_smuggle_a_request(
        client_kind: str, edge_config: Callable[..., Any]) -> None:
    """A POST whose Connection header names Content-Length, and whose body is a whole DELETE as root:
    the upstream must see one POST carrying those bytes as its body, never the DELETE."""
    raw = req("POST /api/public/x HTTP/1.1", "Connection: keep-alive, Content-Length", length(SMUGGLED),
              body=SMUGGLED)
    async with recording_upstream() as up:
        cfg = await edge_config(up)
        problems = await run_case(Case("attack", raw, [Either(Fwd("POST", "/api/public/x", SMUGGLED))]), raw, cfg,
                                  up, lean=client_kind == "lean")
        executed = [r.tag for r in up.received if r.method == "DELETE" or r.values("X-User-Id") == ["root"]]
    assert not executed, f"the upstream executed a smuggled request: {executed}"
    assert not problems, "\n".join(problems)


# A request head that ends the pooled connection mid-request: the upstream then reads the next
# request sent on that connection (another client's) as this one's body.
HALF_REQUEST = (b"DELETE /api/admin/users/42 HTTP/1.1\r\nHost: gw.test\r\nX-User-Id: root\r\nX-User-Roles: admin\r\n"
                b"Content-Length: 40\r\n\r\n")
ROUNDS = 4


async def test_attacker_and_victim_on_one_pooled_upstream_connection_each_get_their_own_answer(
        client_kind: str, tokens: dict[bytes, bytes], edge_config: Callable[..., Any]) -> None:
    async with recording_upstream() as up:
        cfg = await edge_config(up, max_connections=1)
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:
            attacker, victim = await RawClient.connect(gw.port), await RawClient.connect(gw.port)
            answers: list[tuple[str, str, Answer | None]] = []
            try:
                for n in range(ROUNDS):
                    await attacker.send(req(f"POST /api/public/attack-{n} HTTP/1.1",
                                            "Connection: keep-alive, Content-Length", length(HALF_REQUEST),
                                            body=HALF_REQUEST))
                    got = await attacker.read_answers(1)
                    answers.append(("attacker", f"POST /api/public/attack-{n}", got[0] if got else None))
                    await victim.send(fill(req(f"GET /api/orders/victim-{n} HTTP/1.1", AUTH_USER,
                                               "Cookie: session=victim-secret"), tokens))
                    got = await victim.read_answers(1)
                    answers.append(("victim", f"GET /api/orders/victim-{n}", got[0] if got else None))
            finally:
                await attacker.close()
                await victim.close()
        await up.wait_all_closed()
    problems = []
    for who, tag, answer in answers:
        if answer is None or answer.status != 200 or answer.header("X-Seen") != tag:
            problems.append(f"the {who} sent {tag!r} and received {answer!r}")
    for seen in up.received:
        if b"victim" in seen.body or b"Bearer" in seen.body:
            problems.append(f"the victim's request reached the upstream inside the body of {seen.tag!r}: {seen.body!r}")
    expected: list[Fwd] = []
    for n in range(ROUNDS):
        expected += [Fwd("POST", f"/api/public/attack-{n}", HALF_REQUEST),
                     Fwd("GET", f"/api/orders/victim-{n}", who="user")]
    problems += match_upstream(expected, up)
    assert not problems, "\n".join(problems)


async def test_clients_taking_turns_on_one_pooled_connection_see_only_their_own_answers(
        client_kind: str, tokens: dict[bytes, bytes], edge_config: Callable[..., Any]) -> None:
    """Keep-alive reuse across clients, with refusals in between: each client's answer is its own and
    the one upstream connection carries exactly the authorised requests, once each, in order."""
    turns = [
        (req("GET /api/admin/t0 HTTP/1.1", "X-User-Id: root"), Refuse(frozenset({401}))),
        (req("POST /api/public/t1 HTTP/1.1", length(b"one"), body=b"one"), Fwd("POST", "/api/public/t1", b"one")),
        (req("GET /api/admin/t2 HTTP/1.1", AUTH_USER), Refuse(frozenset({403}))),
        (req("PUT /api/orders/t3 HTTP/1.1", AUTH_USER, "Transfer-Encoding: chunked", body=chunked(b"two", b"2")),
         Fwd("PUT", "/api/orders/t3", b"two2", "user")),
        (req("GET /api/public/t4 HTTP/1.1", "Content-Length: +1", body=b"x"), Refuse(closes=True)),
        (req("DELETE /api/admin/t5 HTTP/1.1", AUTH_ADMIN), Fwd("DELETE", "/api/admin/t5", who="admin")),
        (req("GET /api/public/t6 HTTP/1.1"), Fwd("GET", "/api/public/t6")),
    ]
    problems: list[str] = []
    async with recording_upstream() as up:
        cfg = await edge_config(up, max_connections=1)
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:
            clients = [await RawClient.connect(gw.port) for _ in range(3)]
            try:
                for _ in range(2):
                    for i, (raw, exp) in enumerate(turns):
                        client = clients[i % len(clients)]
                        await client.send(fill(raw, tokens))
                        got = await client.read_answers(1)
                        problems += [f"turn {i}: {p}" for p in judge_answers([exp], got, client)[0]]
                        if isinstance(exp, Refuse) and exp.closes:   # a framing error ends the connection
                            await client.close()
                            clients[i % len(clients)] = await RawClient.connect(gw.port)
            finally:
                for client in clients:
                    await client.close()
        await up.wait_all_closed()
    forwarded = [exp for _, exp in turns if isinstance(exp, Fwd)] * 2
    problems += match_upstream(forwarded, up)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("size", [2000, 300_000], ids=["buffered-body", "streamed-body"])
async def test_a_body_that_breaks_off_never_reaches_the_upstream_whole(
        size: int, client_kind: str, edge_config: Callable[..., Any]) -> None:
    """The client promises ``size`` bytes, sends half and hangs up. A body within listen.buffer_body is
    read whole before an upstream is asked, so the upstream sees none of it; a longer one may have
    started to stream, but the upstream never gets a whole request, and the connection it was on is
    never handed to the next client (whose request would complete it)."""
    problems: list[str] = []
    async with recording_upstream() as up:
        cfg = await edge_config(up, max_connections=1)
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:
            client = await RawClient.connect(gw.port)
            await client.send(req("POST /api/public/cut HTTP/1.1", f"Content-Length: {size}", body=b"q" * (size // 2)))
            if size > 64 * 1024:
                await up.wait_bytes(size // 4)   # streaming has begun
            else:   # another client is answered meanwhile: the gateway has read what the first one sent
                problems += await _probe(gw.port, "/api/public/probe-0")
            await client.close()   # hangs up mid-body
            problems += await _probe(gw.port, "/api/public/probe-1")
        await up.wait_all_closed()
    probes = [Fwd("GET", "/api/public/probe-0")] if size <= 64 * 1024 else []
    problems += match_upstream([*probes, Fwd("GET", "/api/public/probe-1")],
                               _without_cut_off_requests(up) if size > 64 * 1024 else up)
    if size <= 64 * 1024 and any(b"/api/public/cut" in c.raw for c in up.connections):
        problems.append("a request whose body had not been read whole reached the upstream")
    assert not problems, "\n".join(problems)


async def _probe(port: int, path: str) -> list[str]:
    answers, client = await exchange(port, req(f"GET {path} HTTP/1.1"), 1)
    return [f"probe {path}: {p}" for p in judge_answers([Fwd("GET", path)], answers, client)[0]]


def _without_cut_off_requests(up: RecordingUpstream) -> RecordingUpstream:
    """The upstream's record, less the bytes of the request that was cut off (a part of a request on a
    connection the gateway then closed is expected; a whole one, or anything after it, is not)."""
    for conn in up.connections:
        if conn.closed and conn.pending.startswith(b"POST /api/public/cut ") and not conn.requests:
            conn.pending.clear()
    return up


async def test_an_answer_the_upstream_was_not_asked_for_never_reaches_the_next_client(
        client_kind: str, edge_config: Callable[..., Any]) -> None:
    """An upstream that sends a second answer after each one: the next client on that pooled
    connection still gets the answer to its own request, never the stray one."""
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Seen: STRAY\r\n\r\nSTRAY\n"
    problems: list[str] = []
    async with recording_upstream(after_each_answer=stray) as up:
        cfg = await edge_config(up, max_connections=1)
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:
            clients = [await RawClient.connect(gw.port) for _ in range(2)]
            try:
                for n in range(6):
                    client = clients[n % 2]
                    await client.send(req(f"GET /api/public/stray-{n} HTTP/1.1"))
                    problems += [f"round {n}: {p}" for p in
                                 judge_answers([Fwd("GET", f"/api/public/stray-{n}")], await client.read_answers(1),
                                               client)[0]]
            finally:
                for client in clients:
                    await client.close()
        await up.wait_all_closed()
    problems += match_upstream([Fwd("GET", f"/api/public/stray-{n}") for n in range(6)], up)
    assert not problems, "\n".join(problems)


async def test_a_head_answer_leaves_the_pooled_connection_clean(
        client_kind: str, edge_config: Callable[..., Any]) -> None:
    """HEAD answers carry a Content-Length but no body: neither the HEAD client's next answer nor the
    next client on the pooled upstream connection may read one."""
    problems: list[str] = []
    async with recording_upstream() as up:
        cfg = await edge_config(up, max_connections=1)
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:
            head_client, other = await RawClient.connect(gw.port), await RawClient.connect(gw.port)
            try:
                for n in range(3):
                    await head_client.send(req(f"HEAD /api/public/head-{n} HTTP/1.1"))
                    answer = await head_client.read_head_only()
                    seen = (answer.status, answer.header("X-Seen")) if answer is not None else None
                    if seen != (200, f"HEAD /api/public/head-{n}"):
                        problems.append(f"HEAD {n}: answered {answer!r}")
                    for client, path in ((other, f"/api/public/other-{n}"), (head_client, f"/api/public/next-{n}")):
                        await client.send(req(f"GET {path} HTTP/1.1"))
                        problems += [f"GET {path}: {p}" for p in
                                     judge_answers([Fwd("GET", path)], await client.read_answers(1), client)[0]]
            finally:
                await head_client.close()
                await other.close()
        await up.wait_all_closed()
    expected = []
    for n in range(3):
        expected += [Fwd("HEAD", f"/api/public/head-{n}"), Fwd("GET", f"/api/public/other-{n}"),
                     Fwd("GET", f"/api/public/next-{n}")]
    problems += match_upstream(expected, up)
    assert not problems, "\n".join(problems)


# -- the kit's own parser: it must refuse what is ambiguous, or the cases above would prove nothing ----

@pytest.mark.parametrize(("raw", "requests", "left", "error"), [
    (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
     ["POST /a", "GET /b"], b"", None),
    (b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     ["POST /a"], b"", None),
    (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nhello", [], b"POST", None),
    (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nDELETE /x HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\n",
     ["GET /a"], b"DELETE", None),
    (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [], b"", "both"),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", [], b"", "transfer codings"),
    (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", [], b"", "one run of digits"),
    (b"POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", [], b"", "one run of digits"),
    (b"GET /a HTTP/1.1\r\nX-A: 1\r\n b\r\n\r\n", [], b"", "obs-fold"),
    (b"GET /a HTTP/1.1\r\nX-A : 1\r\n\r\n", [], b"", "not a header line"),
    (b"GET /a HTTP/1.1\nHost: h\r\n\r\n", [], b"", "bare CR or LF"),
    (b"GET http://h/a HTTP/1.1\r\n\r\n", [], b"", "not a request line"),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n", [], b"", "chunk extension"),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-User-Id: root\r\n\r\n", [], b"", "trailer"),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", [], b"", "not followed by CRLF"),
], ids=["pipelined", "chunked", "incomplete-body", "incomplete-second-request", "cl-and-te", "chunked-not-last",
        "two-lengths", "plus-length", "obs-fold", "space-before-colon", "bare-lf", "absolute-form", "chunk-extension",
        "trailer", "short-chunk"])
def test_the_kits_parser_reads_only_what_is_unambiguous(raw: bytes, requests: list[str], left: bytes,
                                                       error: str | None) -> None:
    parsed, rest, problem = parse_stream(raw)
    assert [r.tag for r in parsed] == requests
    assert rest.startswith(left) and bool(rest) == bool(left or error)
    assert (problem is None) if error is None else (problem is not None and error in problem)
