"""The edge's invariant as a property (hypothesis), on both upstream clients: generated requests whose
headers mix hop-by-hop, framing, identity, gateway, forwarding and ordinary names, in any casing and
with ``_`` for ``-``, under Connection lists that name any of them, with bodies framed by a length or
chunked. Each is sent as exact bytes to the real app, and then an honest request from another client
takes the same pooled upstream connection (max_connections: 1).

For each: the hostile request is forwarded once, as the gateway decided (edge_kit.check_forwarded),
or refused and never forwarded; the honest client gets the answer to its own request; nothing is
left over on the upstream connection. One gateway and one recording upstream serve a whole test;
each example ends with a fresh Forwarder, whose predecessor closes its upstream connections, so the
upstream holds every byte of the example before it is judged.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.config.load import GatewayConfig

from ..edge_kit import (Fwd, Refuse, chunked, edge_sections, exchange, fill, fold, judge_answers, match_upstream,
                       recording_upstream, req, serve_gateway)

pytestmark = pytest.mark.integration

T = TypeVar("T")
EXAMPLES = int(os.environ.get("EDGE_EXAMPLES", "60"))   # per upstream client; more for a deeper run
EXAMPLE_BOUND_S = 15.0

HOP_BY_HOP = ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "HTTP2-Settings"]
FRAMING = ["Content-Length", "Transfer-Encoding", "Host", "Connection", "Expect"]
IDENTITY = ["X-User-Id", "X-User-Roles", "X-Auth-Claims"]
GATEWAY_SET = ["X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"]
FORWARDING = ["Forwarded", "X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Original-URL", "X-Original-URI",
              "X-Original-Method", "X-Rewrite-URL", "X-Forwarded-Uri", "X-Forwarded-Method"]
ORDINARY = ["Accept", "User-Agent", "Content-Type", "Cache-Control", "X-Trace", "X-Custom-Thing"]
# Sent as headers of their own: every family but the real framing headers, whose values decide the
# framing (that is the table's job, test_edge_smuggling.py); their `_` spellings are sent, though.
SENDABLE = HOP_BY_HOP + IDENTITY + GATEWAY_SET + FORWARDING + ORDINARY + ["Content_Length", "Transfer_Encoding"]
NAMEABLE = HOP_BY_HOP + FRAMING + IDENTITY + GATEWAY_SET + FORWARDING + ORDINARY + ["Cookie", "Authorization"]
# DESIGN.md: naming these in Connection "is ignored for that header (or refused with 400)".
PROTECTED = {fold(n) for n in ["Content-Length", "Transfer-Encoding", "Host", "Connection", "Upgrade", "TE",
                               *IDENTITY, *GATEWAY_SET, "Authorization", "Cookie"]}
SINGLETONS = {"content-type", "user-agent"}   # among the names sent here: one copy at most (RFC 9110)
VALUES = ["root", "admin", "10.0.0.1", "/api/admin/users", "https", "DELETE", "1", "for=10.0.0.1;proto=https",
          "h2c", "trailers", "keep-alive", "chunked", "5", "e30", "x"]
COOKIES = ["theme=dark; access_token=forged; lang=en", "refresh_token=r1; csrf_token=c1", "a=1;csrf_token=z",
           "session=s1"]
WHO_TOKEN = {"user": "{USER}", "admin": "{ADMIN}"}
ROUTES = [("/api/public", None), ("/api/orders", "user"), ("/api/admin", "admin")]


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` in any casing, with any of its dashes written as underscores."""
    case = draw(st.sampled_from(["as-is", "lower", "upper", "swap"]))
    text = {"as-is": name, "lower": name.lower(), "upper": name.upper(), "swap": name.swapcase()}[case]
    if "-" in text and draw(st.booleans()):
        dashes = [i for i, c in enumerate(text) if c == "-"]
        chosen = draw(st.sets(st.sampled_from(dashes), min_size=1))
        text = "".join("_" if i in chosen else c for i, c in enumerate(text))
    return text


@st.composite
def connection_line(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(NAMEABLE + ["keep-alive", "close"]), min_size=1, max_size=6))
    spellings = [draw(spelled(n)) if n not in ("keep-alive", "close") else n for n in names]
    sep = draw(st.sampled_from([", ", ",", " , ", ",\t"]))
    return "Connection: " + sep.join(spellings)


@dataclass(frozen=True)
class Hostile:
    method: str
    route: str
    who: str | None
    headers: tuple[tuple[str, str], ...]
    connection: tuple[str, ...]
    body: bytes
    framing: str             # "length" or "chunked"
    splits: tuple[int, ...]  # where a chunked body is cut into chunks

    def raw(self, path: str) -> bytes:
        lines = [f"{k}: {v}" for k, v in self.headers] + list(self.connection)
        if self.who is not None:
            lines.append(f"Authorization: Bearer {WHO_TOKEN[self.who]}")
        if self.framing == "chunked":
            cuts = [0, *sorted(s % (len(self.body) + 1) for s in self.splits), len(self.body)]
            parts = [self.body[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
            return req(f"{self.method} {path} HTTP/1.1", *lines, "Transfer-Encoding: chunked", body=chunked(*parts))
        return req(f"{self.method} {path} HTTP/1.1", *lines, f"Content-Length: {len(self.body)}", body=self.body)

    @property
    def may_be_refused(self) -> bool:
        """Naming a protected header in Connection may be refused with 400 (DESIGN.md); so may an
        Upgrade the gateway does not carry, and a second copy of a header that allows one (aiohttp's
        parser refuses those). Everything else generated here is a valid request."""
        named = {fold(t.strip()) for line in self.connection for t in line.partition(":")[2].split(",")}
        names = [k.lower() for k, _ in self.headers]
        twice = {n for n in names if names.count(n) > 1}
        return bool(named & PROTECTED) or "upgrade" in names or bool(twice & SINGLETONS)


@st.composite
def hostile_requests(draw: st.DrawFn) -> Hostile:
    route, who = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    headers = []
    for name in draw(st.lists(st.sampled_from(SENDABLE), max_size=8)):
        headers.append((draw(spelled(name)), draw(st.sampled_from(VALUES))))
    if draw(st.booleans()):
        headers.append((draw(spelled("Cookie")), draw(st.sampled_from(COOKIES))))
    headers = draw(st.permutations(headers))
    connection = tuple(draw(st.lists(connection_line(), max_size=2)))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=1, max_size=4096)))
    framing = draw(st.sampled_from(["length", "chunked"]))
    splits = tuple(draw(st.lists(st.integers(min_value=0, max_value=4096), max_size=4)))
    return Hostile(method, route, who, tuple(headers), connection, body, framing, splits)


class LoopRunner:
    """Runs coroutines on the test's event loop from hypothesis's thread (every wait bounded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=EXAMPLE_BOUND_S)


@pytest.fixture(params=["lean", "aiohttp"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_generated_requests_reach_the_upstream_once_as_decided_and_never_reach_another_client(
        client_kind: str, make_config: Callable[..., GatewayConfig], mint: Callable[..., str]) -> None:
    tokens = {b"{USER}": mint(sub="alice", roles=["user"]).encode(),
              b"{ADMIN}": mint(sub="boss", roles=["admin"]).encode()}
    counter = iter(range(10**6))
    async with recording_upstream() as up:
        cfg = await asyncio.to_thread(make_config, **edge_sections(up.url, max_connections=1))
        async with serve_gateway(cfg, lean=client_kind == "lean") as gw:

            async def one_example(hostile: Hostile) -> list[str]:
                n = next(counter)
                path, witness = f"{hostile.route}/h{n}", f"/api/orders/witness-{n}"
                answers, client = await exchange(gw.port, fill(hostile.raw(path), tokens), 1)
                w_answers, w_client = await exchange(
                    gw.port, fill(req(f"GET {witness} HTTP/1.1", "Authorization: Bearer {USER}"), tokens), 1)
                await gw.new_forwarder()      # the old one closes its upstream connections:
                await up.wait_all_closed()    # every byte of this example is in
                expect: Fwd | Refuse = Fwd(hostile.method, path, hostile.body, hostile.who,
                                           client_connection=tuple(c.partition(":")[2] for c in hostile.connection))
                if answers and answers[0].status != 200 and hostile.may_be_refused:
                    expect = Refuse(frozenset({400}))
                problems, forwarded = judge_answers([expect], answers, client)
                w_problems, w_forwarded = judge_answers([Fwd("GET", witness, who="user")], w_answers, w_client)
                problems += [f"the honest client: {p}" for p in w_problems]
                problems += match_upstream(forwarded + w_forwarded, up)
                up.forget()
                return problems

            run = LoopRunner(asyncio.get_running_loop())

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(hostile=hostile_requests())
            def check(hostile: Hostile) -> None:
                problems = run(one_example(hostile))
                assert not problems, "\n".join([*problems, f"the request: {hostile.raw('/PATH')[:2000]!r}"])

            await asyncio.to_thread(check)
