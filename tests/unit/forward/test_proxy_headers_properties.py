"""The upstream request head as a property of ``headers.request_header_items`` alone (hypothesis):
for any client header list, the head keeps the gateway's framing and its own headers, holds no
client copy of a framing, hop-by-hop, identity or gateway-set name in any spelling (nor of a
forwarding name from an untrusted peer), and lets ordinary headers through unless the client's
Connection header lists them.

The same invariant is checked through sockets, on both upstream clients, in
tests/integration/server/test_edge_properties.py (a few dozen examples, each a whole exchange); this one runs
the pure function on many more examples, with the identity config, the peer and the body length
generated too. Every reserved name below is written out here from DESIGN.md ("What the upstream
receives is decided by the gateway alone"), not imported from the module it checks.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from multidict import CIMultiDict

from gateway.config.load import IdentityConfig
from gateway.errors import BadRequest, UnknownTransferCoding
from gateway.forward.headers import HeaderPolicy, Peer, request_header_items

EXAMPLES = 1000

# Framing and hop-by-hop (RFC 9110 7.6.1, RFC 9112): never a client's copy upstream. Expect too:
# the gateway answered it already.
FRAMING = ["Content-Length", "Transfer-Encoding", "Host", "Connection", "Upgrade", "TE"]
HOP_BY_HOP = ["Keep-Alive", "Proxy-Connection", "Trailer", "Proxy-Authorization", "Proxy-Authenticate", "Expect"]
GATEWAY_SET = ["X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"]
# Only a trusted proxy may state these: the names DESIGN.md lists, which the gateway owns (no `_`
# spelling of them passes from any peer), and the rest of the X-Forwarded-* and X-Original-* families,
# which an untrusted peer may not send in any spelling (a trusted one may, `_` spellings included:
# they are not names the gateway sets).
FORWARDING_NAMED = ["Forwarded", "X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Uri",
                    "X-Forwarded-Method", "X-Original-URL", "X-Original-URI", "X-Original-Method", "X-Rewrite-URL"]
FORWARDING = [*FORWARDING_NAMED, "X-Forwarded-Server", "X-Forwarded-Ssl", "X-Original-Host"]
FORWARDING_FAMILIES = ("x-forwarded-", "x-original-")
# Ordinary names, with near misses of reserved ones (a filter that matches by prefix or substring
# would take them out).
ORDINARY = ["Accept", "User-Agent", "Cache-Control", "X-Trace", "X-Custom-Thing", "X-User", "X-User-Idx",
            "X-Forwarded", "X-Originals", "Hostname", "Content-Lengths", "X-Request", "Te-Extra"]

# Identity configs: the default, one with claims and assertion headers, one whose names are
# written with `_` and in odd case (a config may do that; the client's `-` spelling is the same name).
IDENTITIES = [
    IdentityConfig(),
    IdentityConfig(claims_header="X-Auth-Claims", assertion_header="X-Auth-Assertion", strip_authorization=False),
    IdentityConfig(headers={"sub": "X_Subject", "roles": "x-user-ROLES"}, claims_header="X-Claims"),
]
GATEWAY_COOKIES = frozenset({"refresh_token", "access_token", "csrf_token"})
PEERS = [Peer("203.0.113.7", "http", trusted=False), Peer(None, "http", trusted=False),
         Peer("10.0.0.2", "https", trusted=True)]
VALUES = ["root", "admin", "1", "5", "0", "chunked", "keep-alive", "close", "gzip", "10.0.0.1", "https",
          "for=10.0.0.1", "/admin", "DELETE", "e30", "x y", "", "abc-123"]
TE_VALUES = ["chunked", "chunked", "Chunked ", " CHUNKED", "gzip, chunked", "identity", "chunked, chunked"]
COOKIES = ["theme=dark; access_token=forged; lang=en", "refresh_token=r1; csrf_token=c1", "a=1;csrf_token=z",
           "session=s1", "access_token=only"]


def fold(name: str) -> str:
    return name.lower().replace("_", "-")


ORDINARY_FOLDED = frozenset(fold(n) for n in ORDINARY)
GATEWAY_SET_FOLDED = frozenset(fold(n) for n in GATEWAY_SET)
FORWARDING_FOLDED = frozenset(fold(n) for n in FORWARDING)
FORWARDING_NAMED_FOLDED = frozenset(fold(n) for n in FORWARDING_NAMED)
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")   # forward/request_id.py's docstring: "exactly one sane value"
UNTRUSTED_STATES = frozenset(fold(n) for n in FORWARDING + GATEWAY_SET) - {"x-request-id"}
ALWAYS_OWNED = frozenset(fold(n) for n in FRAMING + HOP_BY_HOP + GATEWAY_SET + FORWARDING_NAMED)


def identity_names(identity: IdentityConfig) -> list[str]:
    return [*identity.headers.values(), *(n for n in (identity.claims_header, identity.assertion_header) if n)]


@dataclass(frozen=True)
class Case:
    pairs: tuple[tuple[str, str], ...]   # the client's headers, in order, Connection lines among them
    identity_config: IdentityConfig
    identity_headers: tuple[tuple[str, str], ...]   # what the gateway sets (empty on a public route)
    peer: Peer
    body_length: int | None

    @property
    def named(self) -> frozenset[str]:
        """What the client's Connection headers list, folded."""
        return frozenset(fold(t.strip()) for k, v in self.pairs if k.lower() == "connection"
                         for t in v.split(",") if t.strip())


CASINGS = st.sampled_from(["as-is", "lower", "upper", "swap", "mixed"])
MASKS = st.integers(0, 2**64 - 1)   # which letters a "mixed" casing flips, which dashes become `_`
TE_STRATEGY, COOKIE_STRATEGY, VALUE_STRATEGY = (st.sampled_from(v) for v in (TE_VALUES, COOKIES, VALUES))
SEPARATORS = st.sampled_from([",", ", ", " , ", ",\t"])
PEER_STRATEGY = st.sampled_from(PEERS)
BODY_LENGTHS = st.one_of(st.none(), st.integers(0, 10**9))
GATEWAY_VALUES = st.sampled_from(["alice", "user,admin", "e30"])
ID_COUNTS = st.sampled_from([0, 1, 1, 2])
REQUEST_IDS = st.sampled_from(["abc-123", "req.1:2_3", "a" * 128, "a" * 129, "bad id", "", "<script>"])


def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` in any casing, with any of its dashes written as underscores (or none)."""
    case = draw(CASINGS)
    if case == "mixed":
        flips = draw(MASKS)
        text = "".join(c.swapcase() if flips >> i & 1 else c for i, c in enumerate(name))
    else:
        text = {"as-is": name, "lower": name.lower(), "upper": name.upper(), "swap": name.swapcase()}[case]
    if "-" in text:
        underscores = draw(MASKS) if draw(st.booleans()) else 0
        text = "".join("_" if c == "-" and underscores >> i & 1 else c for i, c in enumerate(text))
    return text


@st.composite
def cases(draw: st.DrawFn) -> Case:
    identity = draw(st.sampled_from(IDENTITIES))
    own_identity = identity_names(identity)
    # Framing and identity names twice over: the hostile ones are what this property is about.
    nameable = st.sampled_from(2 * FRAMING + HOP_BY_HOP + GATEWAY_SET + FORWARDING + ORDINARY + 2 * own_identity
                               + ["Cookie", "Authorization"])
    listable = st.sampled_from([*FRAMING, *GATEWAY_SET, *own_identity, *ORDINARY, *HOP_BY_HOP, *FORWARDING[:3],
                                "Cookie", "Authorization", "close", "keep-alive"])
    pairs: list[tuple[str, str]] = []
    for name in draw(st.lists(nameable, max_size=10)):
        if name == "Transfer-Encoding":
            value = draw(TE_STRATEGY)
        elif name == "Cookie":
            value = draw(COOKIE_STRATEGY)
        else:
            value = draw(VALUE_STRATEGY)
        pairs.append((spelled(draw, name), value))
    for _ in range(draw(ID_COUNTS)):   # the client's request ids, sane or not
        pairs.insert(draw(st.integers(0, len(pairs))), (spelled(draw, "X-Request-Id"), draw(REQUEST_IDS)))
    for _ in range(draw(st.integers(0, 2))):   # Connection lines, anywhere in the list
        listed = draw(st.lists(listable, min_size=1, max_size=5))
        if pairs and draw(st.booleans()):   # one that names headers the request has: the case that matters
            listed += draw(st.lists(st.sampled_from([k for k, _ in pairs]), min_size=1, max_size=3))
        line = (spelled(draw, "Connection"), draw(SEPARATORS).join(spelled(draw, n) for n in listed))
        pairs.insert(draw(st.integers(0, len(pairs))), line)
    public = draw(st.booleans())
    sets = [] if public else [(n, draw(GATEWAY_VALUES)) for n in own_identity if draw(st.integers(0, 3))]
    return Case(tuple(pairs), identity, tuple(sets), draw(PEER_STRATEGY), draw(BODY_LENGTHS))


def folded_values(out: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in out if fold(k) == fold(name)]


def problems_with(case: Case, out: list[tuple[str, str]], request_id: str) -> list[str]:
    """Everything wrong with ``out``, the upstream head's headers for ``case``; empty when right."""
    p: list[str] = []
    identity = case.identity_config
    own_identity = {fold(n) for n in identity_names(identity)}
    # Framing is the gateway's own: its one Content-Length, or none.
    lengths = folded_values(out, "Content-Length")
    expected_length = [] if case.body_length is None else [("Content-Length", str(case.body_length))]
    if lengths != expected_length:
        p.append(f"Content-Length {lengths!r}, expected {expected_length!r}")
    for name in FRAMING[1:] + HOP_BY_HOP:
        if found := folded_values(out, name):
            p.append(f"framing or hop-by-hop header from the client: {found!r}")
    if identity.strip_authorization and (found := folded_values(out, "Authorization")):
        p.append(f"Authorization forwarded: {found!r}")
    # Identity: exactly what the gateway set, nothing the client sent, in no spelling.
    identity_out = [(k, v) for k, v in out if fold(k) in own_identity]
    if sorted(identity_out) != sorted(case.identity_headers):
        p.append(f"identity headers {identity_out!r}, expected {list(case.identity_headers)!r}")
    # The gateway's own: one request id (the one it returned: the client's when it sent exactly one
    # sane one, whatever its Connection header lists), one X-Forwarded-For ending with the peer.
    if (ids := folded_values(out, "X-Request-Id")) != [("X-Request-Id", request_id)]:
        p.append(f"X-Request-Id {ids!r}, expected exactly the gateway's {request_id!r}")
    sent_ids = sent(case, "X-Request-Id")
    if len(sent_ids) == 1 and SANE_REQUEST_ID.fullmatch(sent_ids[0][1]):
        if request_id != sent_ids[0][1]:
            p.append(f"request id {request_id!r}, expected the client's one sane {sent_ids[0][1]!r}")
    elif request_id in [v for _, v in sent_ids]:
        p.append(f"request id {request_id!r} taken from {sent_ids!r}")
    xff = folded_values(out, "X-Forwarded-For")
    if case.peer.address is not None and (len(xff) != 1 or not xff[0][1].endswith(case.peer.address)):
        p.append(f"X-Forwarded-For {xff!r}, expected one ending with {case.peer.address!r}")
    p += trusted_problems(case, out) if case.peer.trusted else untrusted_problems(case, out)
    # No `_` spelling of a name the gateway owns, from any peer (a CGI/WSGI upstream reads it as `-`).
    owned = (ALWAYS_OWNED | own_identity
             | ({"authorization"} if identity.strip_authorization else set()))
    if found := [(k, v) for k, v in out if "_" in k and fold(k) in owned and (k, v) not in case.identity_headers]:
        p.append(f"another spelling of an owned header passed: {found!r}")
    # Ordinary headers pass, in order, unless the client's Connection header lists them.
    expected, named = [], case.named
    for name, value in case.pairs:
        if fold(name) in ORDINARY_FOLDED and fold(name) not in named:
            expected.append((name, value))
    if (ordinary := [(k, v) for k, v in out if fold(k) in ORDINARY_FOLDED]) != expected:
        p.append(f"ordinary headers {ordinary!r}, expected {expected!r}")
    # The gateway's cookies never cross; a Connection header may take Cookie out, nothing else.
    for _, value in folded_values(out, "Cookie"):
        if any(pair.partition("=")[0].strip() in GATEWAY_COOKIES for pair in value.split(";")):
            p.append(f"a gateway cookie forwarded: {value!r}")
    return p


def sent(case: Case, name: str) -> list[tuple[str, str]]:
    """The client's copies of ``name`` as spelled with dashes (in any case)."""
    return [(k, v) for k, v in case.pairs if k.lower() == name.lower()]


def trusted_problems(case: Case, out: list[tuple[str, str]]) -> list[str]:
    """A trusted proxy's forwarding headers are believed: its X-Forwarded-For chain is extended, its
    -Proto/-Host and the named ones kept, and a Connection header listing them changes nothing."""
    p = []
    chain = ", ".join([v for _, v in sent(case, "X-Forwarded-For")] + [case.peer.address or ""])
    if (xff := folded_values(out, "X-Forwarded-For")) != [("X-Forwarded-For", chain)]:
        p.append(f"X-Forwarded-For {xff!r}, expected the chain {chain!r}")
    proto = sent(case, "X-Forwarded-Proto") or [("X-Forwarded-Proto", case.peer.scheme)]
    if (xfp := folded_values(out, "X-Forwarded-Proto")) != proto:
        p.append(f"X-Forwarded-Proto {xfp!r}, expected {proto!r}")
    kept = [(k, v) for k, v in case.pairs if "_" not in k and fold(k) in FORWARDING_NAMED_FOLDED]
    if (found := [(k, v) for k, v in out if fold(k) in FORWARDING_NAMED_FOLDED]) != kept:
        p.append(f"forwarding headers {found!r}, expected the trusted proxy's {kept!r}")
    return p


def untrusted_problems(case: Case, out: list[tuple[str, str]]) -> list[str]:
    """An untrusted peer states no address, scheme, host, prefix or original URL: only the gateway does."""
    p = []
    gateway_own = {("X-Forwarded-For", case.peer.address), ("X-Forwarded-Proto", case.peer.scheme)}
    hosts = [v for k, v in case.pairs if k.lower() == "host"]
    gateway_own |= {("X-Forwarded-Host", h) for h in hosts}
    stated = [(k, v) for k, v in out if fold(k) in UNTRUSTED_STATES or fold(k).startswith(FORWARDING_FAMILIES)]
    if found := [kv for kv in stated if kv not in gateway_own]:
        p.append(f"a client-sent forwarding header from an untrusted peer: {found!r}")
    if folded_values(out, "X-Forwarded-Proto") != [("X-Forwarded-Proto", case.peer.scheme)]:
        p.append(f"X-Forwarded-Proto {folded_values(out, 'X-Forwarded-Proto')!r}, expected the peer's scheme")
    expected_xfh = [("X-Forwarded-Host", hosts[0])] if hosts and hosts[0] else []   # an empty Host states none
    if (xfh := folded_values(out, "X-Forwarded-Host")) != expected_xfh:
        p.append(f"X-Forwarded-Host {xfh!r}, expected {expected_xfh!r}")
    return p


def refusal_for(case: Case) -> type[Exception] | tuple[type[Exception], ...] | None:
    """What the gateway refuses before anything is sent: a transfer coding other than chunked (501),
    more than one Host (400). Either may be raised when both apply."""
    bad_coding = any(k.lower() == "transfer-encoding" and v.strip().lower() != "chunked" for k, v in case.pairs)
    hosts = sum(k.lower() == "host" for k, _ in case.pairs)
    if bad_coding and hosts > 1:
        return (UnknownTransferCoding, BadRequest)
    return UnknownTransferCoding if bad_coding else BadRequest if hosts > 1 else None


def test_the_upstream_head_keeps_the_gateways_framing_and_headers_and_no_client_copy_of_a_reserved_name() -> None:
    seen: Counter[str] = Counter()
    policies = {id(i): HeaderPolicy.from_config(i, GATEWAY_COOKIES) for i in IDENTITIES}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases())
    def check(case: Case) -> None:
        policy = policies[id(case.identity_config)]
        refusal = refusal_for(case)
        if refusal is not None:
            with pytest.raises(refusal):
                request_header_items(CIMultiDict(case.pairs), policy, case.peer, dict(case.identity_headers),
                                     case.body_length)
            seen["refused"] += 1
            return
        out, request_id = request_header_items(CIMultiDict(case.pairs), policy, case.peer,
                                               dict(case.identity_headers), case.body_length)
        problems = problems_with(case, out, request_id)
        assert not problems, "\n".join([*problems, f"client headers: {list(case.pairs)!r}", f"peer: {case.peer}",
                                     f"identity config: {identity_names(case.identity_config)}", f"out: {out!r}"])
        tally(case, seen)

    check()
    # The run was not vacuous: the hostile shapes this property is about were generated and forwarded.
    for what in ["forwarded", "refused", "connection names identity", "connection names content-length",
                 "connection names a gateway-set header", "connection names an ordinary header present",
                 "identity sent with _", "identity sent as configured", "client content-length",
                 "forwarding header from untrusted", "trusted peer", "gateway cookie sent",
                 "trusted peer, connection names a forwarding header",
                 "connection names x-request-id, one sane id sent"]:
        assert seen[what] >= 10, (what, seen)


def tally(case: Case, seen: Counter[str]) -> None:
    own_identity = {fold(n) for n in identity_names(case.identity_config)}
    names = [k for k, _ in case.pairs]
    folded = {fold(k) for k in names}
    seen["forwarded"] += 1
    seen["connection names identity"] += bool(case.named & own_identity)
    seen["connection names content-length"] += "content-length" in case.named
    seen["connection names a gateway-set header"] += bool(case.named & GATEWAY_SET_FOLDED)
    seen["connection names an ordinary header present"] += bool(case.named & folded & ORDINARY_FOLDED)
    seen["identity sent with _"] += any("_" in k and fold(k) in own_identity for k in names)
    seen["identity sent as configured"] += any(fold(k) in own_identity and "_" not in k for k in names)
    seen["client content-length"] += "content-length" in folded
    seen["forwarding header from untrusted"] += not case.peer.trusted and bool(folded & FORWARDING_FOLDED)
    seen["trusted peer"] += case.peer.trusted
    seen["trusted peer, connection names a forwarding header"] += case.peer.trusted and bool(
        case.named & (FORWARDING_NAMED_FOLDED | GATEWAY_SET_FOLDED))
    seen["connection names x-request-id, one sane id sent"] += "x-request-id" in case.named and len(
        ids := sent(case, "X-Request-Id")) == 1 and bool(SANE_REQUEST_ID.fullmatch(ids[0][1]))
    seen["gateway cookie sent"] += any(fold(k) == "cookie" and any(c in v for c in GATEWAY_COOKIES)
                                       for k, v in case.pairs)
