"""The lean client's answer parsing (forward/h1client.py: llhttp through httptools, plus the gateway's own
checks) against h11's parsing of the same bytes (hypothesis): generated answers (status lines, headers,
bodies framed by Content-Length, chunked or the close, 1xx answers before them) and byte-level
mutations of them, cut into reads at generated points. Both must agree on the status, reason,
headers and body, and on whether the answer ended by its framing or by the close; or both refuse it
(the gateway's 502). Where the gateway documents that it is stricter than h11, it must refuse
(``STRICTER``); h11 accepting such an answer is then no disagreement.

Why h11 and not the stdlib's http.client: h11 implements RFC 9112's grammar with regular expressions,
refuses conflicting framing (two different lengths, a length beside chunked is framed as chunked)
and a premature close, and is sans-I/O, so it takes exactly the reads the lean client takes and is
told of the close the same way. http.client parses header lines with the email package (a line
without a colon is a "defect", not an error), takes a missing status code for HTTP/0.9, and needs a
socket: most malformed answers would be "accepted" there and the comparison would say little.

The lean client is driven without a network, through the asyncio.Protocol entry points the event
loop calls (``Connection.data_received`` per read, ``connection_lost`` for the close): from the
socket read on, every byte takes the production path, and the reads are cut exactly where the
example says (a socket would coalesce them). Only ``Connection.send``'s write is left out: the
answer in progress is set as ``send`` sets it.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.forward.h1client import Answer, UpstreamError
from gateway.forward.pool import Connection, UpstreamPool

EXAMPLES = 800

# Where the gateway refuses (502) what h11 accepts, and where that is written down. Each is a
# predicate on the answer's bytes below (``stricter_reasons``); the lean client MUST refuse then.
STRICTER = {
    "two Content-Length values": "forward/h1client.py on_headers_complete: llhttp lets through one value only "
                                 "(RFC 9112 6.3: a recipient may refuse; h11 folds equal copies into one)",
    "Content-Length beside Transfer-Encoding": "RFC 9112 6.1 ('ought to be handled as an error'); "
                                               "tests/integration/forward/test_upstream_protocol.py pins it as 502",
    "status outside 100..599": "forward/answer_head.py check_answer_head",
    "HTTP version other than 1.0 and 1.1": "forward/answer_head.py check_answer_head",
    "a control character in the head": "forward/answer_head.py check_answer_head (h11 refuses only NUL, CR, LF)",
    "obs-fold": "RFC 9112 5.2: a gateway may answer 502 to a folded field line",
    "a bare LF ends a line": "RFC 9112 2.2: a recipient MAY recognise a bare LF; llhttp does not",
    "whitespace after a chunk size": "RFC 9112 7.1: chunk-size = 1*HEXDIG, BWS only before `;`",
}
# Checked on its own below: an answer whose Transfer-Encoding is not exactly `chunked` (another
# coding, or chunked twice), which the lean client once relayed still coded as if it were plain.
OTHER_CODING = "a transfer coding other than one chunked"


# --- the two parsers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    accepted: bool
    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    ended_by_framing: bool = False   # complete before the close: the framing said where it ends
    why: str = ""                    # a refusal's reason, for the failure message

    def comparable(self) -> tuple[object, ...]:
        return (self.accepted, self.status, self.reason, self.headers, self.body, self.ended_by_framing)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")   # as both gateway clients decode a head


def _normal_headers(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Field values without trailing OWS (RFC 9110 5.5: not part of the value; llhttp keeps it, h11
    drops it), framing values case-folded (h11 lower-cases Transfer-Encoding)."""
    out = []
    for name, value in pairs:
        value = value.rstrip(" \t")
        if name.lower() in ("transfer-encoding", "content-length"):
            value = value.lower()
        out.append((name, value))
    return tuple(out)


async def lean_parse(reads: list[bytes]) -> Outcome:
    pool = UpstreamPool("127.0.0.1", 9, limit=1, connect_timeout_s=1.0, wait_s=1.0)
    conn = Connection(pool)
    conn.answer = answer = Answer(conn, timeout_s=30.0)   # as Connection.send sets it, less the write
    for data in reads:
        conn.data_received(data)
    ended_by_framing = answer.complete
    conn.connection_lost(None)   # the upstream closed
    if answer.error is not None or not answer.head_done:
        return Outcome(False, why=str(answer.error))
    try:
        body = await answer.read()
    except UpstreamError as exc:
        return Outcome(False, why=str(exc))
    finally:
        answer.finish()
    return Outcome(True, answer.status, answer.reason, _normal_headers(answer.headers), body, ended_by_framing)


def h11_parse(reads: list[bytes]) -> tuple[Outcome, h11.Response | None]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    response: h11.Response | None = None
    body = b""
    try:
        for data in [*reads, b""]:   # b"": the close
            conn.receive_data(data)
            while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    headers = [(_decode(k), _decode(v)) for k, v in response.headers.raw_items()]
                    return Outcome(True, response.status_code, _decode(response.reason),
                                   _normal_headers(headers), body, ended_by_framing=data != b""), response
                elif isinstance(event, h11.ConnectionClosed):
                    return Outcome(False, why="closed before the answer ended"), response
    except h11.ProtocolError as exc:
        return Outcome(False, why=f"h11: {exc}"), response
    return Outcome(False, why="h11 wants more"), response


# --- what the gateway is stricter about ------------------------------------------------------

_STATUS = re.compile(rb"[^ ]* +([0-9]{3})(?:[ \r\n]|$)")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def split_heads(data: bytes) -> tuple[list[bytes], bytes]:
    """The answer heads (1xx ones first) and what follows the last one, as a lenient reader sees them."""
    heads = []
    while True:
        end = _HEAD_END.search(data)
        if end is None:
            return [*heads, data], b""
        head, data = data[:end.end()], data[end.end():]
        heads.append(head)
        status = _STATUS.match(head)
        if status is None or not status.group(1).startswith(b"1") or status.group(1) == b"101":
            return heads, data


def head_lines(head: bytes) -> list[bytes]:
    return [line.removesuffix(b"\r") for line in head.split(b"\n")]


def field_lines(heads: list[bytes], name: bytes) -> list[bytes]:
    found = []
    for head in heads:
        for line in head_lines(head)[1:]:
            field, colon, value = line.partition(b":")
            if colon and field.lower() == name:
                found.append(value.strip(b" \t"))
    return found


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE_WS = re.compile(rb"(?:^|\n)[0-9A-Fa-f]+[ \t]+\r?\n")


def stricter_reasons(data: bytes, response: h11.Response | None) -> set[str]:
    """Which of STRICTER apply to an answer (the whole byte string the upstream sent)."""
    heads, rest = split_heads(data)
    found = set()
    for head in heads:
        lengths = field_lines([head], b"content-length")
        if len(lengths) > 1 or any(b"," in v for v in lengths):
            found.add("two Content-Length values")
        if lengths and field_lines([head], b"transfer-encoding"):
            found.add("Content-Length beside Transfer-Encoding")
        lines = head_lines(head.rstrip(b"\r\n"))
        if any(_CONTROL.search(line) for line in lines):
            found.add("a control character in the head")
        if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
            found.add("obs-fold")
        if re.search(rb"(?:^|[^\r])\n", head):
            found.add("a bare LF ends a line")
    if response is not None:
        if not 100 <= response.status_code <= 599:
            found.add("status outside 100..599")
        if response.http_version not in (b"1.0", b"1.1"):
            found.add("HTTP version other than 1.0 and 1.1")
    if field_lines(heads[-1:], b"transfer-encoding") and _CHUNK_SIZE_WS.search(rest):
        found.add("whitespace after a chunk size")
    return found


def has_other_coding(data: bytes) -> bool:
    heads, _ = split_heads(data)
    codings = [c.strip(b" \t").lower() for v in field_lines(heads[-1:], b"transfer-encoding") for c in v.split(b",")]
    return bool(codings) and codings != [b"chunked"]


# --- generation ------------------------------------------------------------------------------

# Mostly well-formed, with each kind of flaw now and then (the mutations add more).
STATUSES = [200] * 6 + [201, 204, 206, 301, 304, 404, 500, 599, 600, 700, 99]
VERSIONS = [b"HTTP/1.1"] * 12 + [b"HTTP/1.0"] * 3 + [b"HTTP/2.0", b"HTTP/1.2"]
REASONS = [b"OK"] * 8 + [b"", b"Not Found", b"caf\xc3\xa9", b"caf\xe9", b"A\tB", b"bad\x01", b"x\x7fy"]
NAMES = [b"Content-Type", b"X-A", b"Set-Cookie", b"Cache-Control", b"Server", b"Connection", b"X-Empty", b"Link"]
VALUES = [b"text/plain", b"1", b"", b"a\tb", b"caf\xc3\xa9", b"caf\xe9", b" spaced  ", b"close", b"keep-alive",
          b"a=1; Path=/", b"</a.css>; rel=preload"] * 3 + [b"bad\x01", b"x\x7fy", b"first\r\n folded",
                                                          b"first\r\n\tfolded"]
FRAMINGS = ["length"] * 4 + ["chunked"] * 4 + ["close"] * 3 + [
    "length-short", "length-long", "two-lengths", "two-different-lengths", "length-list", "length-and-chunked",
    "chunked-cased"]
MUTATION_BYTES = [b"\x00", b"\x01", b"\r", b"\n", b" ", b"\t", b":", b"\x7f", b"\xff", b"0", b"a", b";", b","]


@st.composite
def header_lines(draw: st.DrawFn) -> list[bytes]:
    pairs = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=4))
    return [name + b": " + value for name, value in pairs]


def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
    out = b""
    for part in parts:
        ext = draw(st.sampled_from([b"", b"", b"", b";a=b", b";x", b" ;x", b" "]))
        out += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
    trailer = draw(st.sampled_from([b"", b"", b"X-Trailer: 1\r\n"]))
    return out + b"0\r\n" + trailer + b"\r\n"


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):   # 1xx answers first
        status = draw(st.sampled_from([b"100 Continue", b"102 Processing", b"103 Early Hints"]))
        out += b"HTTP/1.1 " + status + b"\r\n" + b"".join(line + b"\r\n" for line in draw(header_lines())) + b"\r\n"
    status = draw(st.sampled_from(STATUSES))
    version, reason = draw(st.sampled_from(VERSIONS)), draw(st.sampled_from(REASONS))
    out += b"%s %03d %s\r\n" % (version, status, reason) if draw(st.integers(0, 9)) else b"%s %03d\r\n" % (
        version, status)
    lines = draw(header_lines())
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(FRAMINGS))
    n = len(body)
    framing_lines = {
        "length": [b"Content-Length: %d" % n], "length-short": [b"Content-Length: %d" % (n + 3)],
        "length-long": [b"Content-Length: %d" % max(0, n - 3)], "close": [],
        "two-lengths": [b"Content-Length: %d" % n] * 2,
        "two-different-lengths": [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 1)],
        "length-list": [b"Content-Length: %d, %d" % (n, n)],
        "chunked": [b"Transfer-Encoding: chunked"], "chunked-cased": [b"Transfer-Encoding: Chunked "],
        "length-and-chunked": [b"Content-Length: %d" % n, b"Transfer-Encoding: chunked"],
    }[framing]
    lines = draw(st.permutations(lines + framing_lines))
    out += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    return out + (chunked(draw, body) if "chunked" in framing else body)


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """One byte-level change: a byte in, a byte out, a CRLF made LF, a line twice, or a cut."""
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["insert", "delete", "bare-lf", "line-twice", "cut"]))
    if kind == "insert":
        return data[:at] + draw(st.sampled_from(MUTATION_BYTES)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + 1:]
    lines = data.split(b"\r\n")
    k = at % len(lines)
    if kind == "bare-lf" and len(lines) > 1:
        k = min(k, len(lines) - 2)
        return b"\r\n".join(lines[:k]) + (b"\r\n" if k else b"") + lines[k] + b"\n" + b"\r\n".join(lines[k + 1:])
    if kind == "line-twice":
        return b"\r\n".join([*lines[:k + 1], lines[k], *lines[k + 1:]])
    return data[:at]


@dataclass(frozen=True)
class Case:
    data: bytes
    cuts: tuple[int, ...]
    mutated: bool

    def reads(self) -> list[bytes]:
        points = [0, *sorted({c % (len(self.data) + 1) for c in self.cuts}), len(self.data)]
        return [self.data[a:b] for a, b in zip(points, points[1:]) if b > a]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    data = draw(answers())
    mutations = draw(st.integers(0, 2)) if draw(st.booleans()) else 0
    for _ in range(mutations):
        data = mutate(draw, data)
    cuts = tuple(draw(st.lists(st.integers(0, 2000), max_size=4)))
    return Case(data, cuts, mutations > 0)


# --- the properties -------------------------------------------------------------------------

@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def verdict(lean: Outcome, ref: Outcome, stricter: set[str]) -> str | None:
    """What is wrong with the lean client's outcome, or None."""
    if stricter:
        return None if not lean.accepted else f"accepted an answer the gateway refuses ({sorted(stricter)})"
    if lean.comparable() != ref.comparable():
        return "the two parsers disagree"
    return None


def test_lean_client_parses_answers_as_h11_does_or_refuses_where_documented(loop: asyncio.AbstractEventLoop) -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases())
    def check(case: Case) -> None:
        reads = case.reads()
        ref, response = h11_parse(reads)
        if has_other_coding(case.data):
            seen["other transfer coding: left to its own test"] += 1
            return
        lean = loop.run_until_complete(lean_parse(reads))
        stricter = stricter_reasons(case.data, response)
        problem = verdict(lean, ref, stricter)
        assert problem is None, f"{problem}\nanswer: {case.data!r}\nreads: {reads!r}\nlean: {lean}\nh11:  {ref}"
        tally(case, lean, ref, stricter, seen)

    check()
    for what in ["both accepted", "both refused", "refused where only the gateway is stricter",
                 "ended by the close", "ended by its framing", "chunked", "after 1xx", "split into reads",
                 "mutated and accepted", "mutated and refused",
                 *(f"stricter: {reason}" for reason in STRICTER)]:
        assert seen[what] >= 5, f"{what}: {dict(seen)}"


def tally(case: Case, lean: Outcome, ref: Outcome, stricter: set[str], seen: Counter[str]) -> None:
    if lean.accepted and ref.accepted:
        seen["both accepted"] += 1
        seen["ended by its framing" if lean.ended_by_framing else "ended by the close"] += 1
        seen["chunked"] += any(n.lower() == "transfer-encoding" for n, _ in lean.headers)
        seen["after 1xx"] += case.data.startswith(b"HTTP/1.1 1")
        seen["split into reads"] += len(case.reads()) > 1
    elif not lean.accepted and not ref.accepted:
        seen["both refused"] += 1
    else:
        seen["refused where only the gateway is stricter"] += 1
    for reason in stricter:
        seen[f"stricter: {reason}"] += 1
    if case.mutated:
        seen["mutated and accepted" if lean.accepted else "mutated and refused"] += 1


CODINGS = [[b"gzip"], [b"deflate"], [b"gzip", b"chunked"], [b"chunked", b"chunked"],
           [b"compress", b"chunked"], [b"chunked", b"gzip"], [b"br"]]


@st.composite
def coded_answers(draw: st.DrawFn) -> bytes:
    """Answers whose Transfer-Encoding is not exactly one `chunked`: as one header or several."""
    codings = draw(st.sampled_from(CODINGS))
    body = draw(st.binary(min_size=1, max_size=100))
    if draw(st.booleans()):
        framing = b"Transfer-Encoding: " + b", ".join(codings) + b"\r\n"
    else:
        framing = b"".join(b"Transfer-Encoding: " + c + b"\r\n" for c in codings)
    coded = chunked(draw, body) if codings[-1] == b"chunked" else body
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framing + b"\r\n" + coded


def test_an_answer_with_a_transfer_coding_other_than_chunked_is_refused_as_h11_refuses_it(
        loop: asyncio.AbstractEventLoop) -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(data=coded_answers(), cuts=st.lists(st.integers(0, 500), max_size=3))
    def check(data: bytes, cuts: list[int]) -> None:
        reads = Case(data, tuple(cuts), False).reads()
        ref, _ = h11_parse(reads)
        assert not ref.accepted, ref   # the reference refuses every one of these
        lean = loop.run_until_complete(lean_parse(reads))
        seen["lean accepted"] += lean.accepted
        assert not lean.accepted, f"answer: {data!r}\nlean: {lean}\nh11:  {ref}"

    check()
