"""A kit for byte-level tests of the edge: what a client sends to the gateway, exactly, and what the
upstream receives, exactly.

- ``RecordingUpstream``: a raw-socket upstream that keeps every byte each connection brought, parses
  them with ``parse_request`` (strict RFC 9112: anything ambiguous is an error, never a guess) and
  answers each request it could parse with a small Content-Length-framed answer that names it
  (``X-Seen: METHOD TARGET``, body the same). Connections stay open, so a request smuggled into a
  pooled connection shows up as an answer to the wrong client.
- ``RawClient``: sends exact bytes to the gateway and reads its answers (httptools), every wait bounded.
- ``serve_gateway``: the real app (``build_app`` behind ``GatewayRunner``) on a loopback port, on
  either upstream client (the lean one, or aiohttp's for everything).
- ``check_forwarded``: the edge's trust rules for one request the upstream received (DESIGN.md,
  "What the upstream receives is decided by the gateway alone"); ``judge_answers`` and
  ``match_upstream``: a client's answers and the upstream's requests against what each request of the
  client should have become (``Fwd``, ``Refuse``, ``Either``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import httptools
from aiohttp import web

from gateway.config.load import GatewayConfig
from gateway.forward.forwarder import Forwarder
from gateway.pipeline import GATEWAY
from gateway.server.app import GatewayRunner, build_app

BOUND_S = 2.5            # the longest any single wait in these tests may take
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024

# -- strict request parsing (RFC 9112) -------------------------------------------------------------

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,15}")


class Malformed(Exception):
    """Bytes that are not exactly one well-formed, unambiguous HTTP/1.1 request."""


def fold(name: str) -> str:
    """A header name as the edge's trust rules compare it: case folded, ``_`` read as ``-``."""
    return name.lower().replace("_", "-")


@dataclass(frozen=True)
class Request:
    """One request as the upstream received it. ``framing``: "length", "chunked" or "none"."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str
    raw: bytes

    def values(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive, spelled exactly)."""
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    def folded(self, name: str) -> list[tuple[str, str]]:
        """Every header whose name equals ``name`` once folded (``X_User_Id`` for X-User-Id)."""
        wanted = fold(name)
        return [(k, v) for k, v in self.headers if fold(k) == wanted]

    @property
    def tag(self) -> str:
        return f"{self.method} {self.target}"


def parse_request(data: bytes) -> tuple[Request, int] | None:
    """The first request in ``data`` and the number of bytes it took; None while it is incomplete.

    Raises Malformed for anything RFC 9112 does not define exactly, or leaves to the reader's
    judgement: bare CR or LF, obs-fold, whitespace before a colon, a request line that is not
    ``METHOD origin-form HTTP/1.1``, Content-Length and Transfer-Encoding together, any transfer
    coding but a single ``chunked``, more than one Content-Length, a length that is not plain
    digits, chunk extensions, trailer fields, a chunk not followed by CRLF.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise Malformed("a request head longer than 64 KiB")
        _check_partial_head(data)
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise Malformed(f"a bare CR or LF in {line[:60]!r}")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        raise Malformed(f"not a request line: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise Malformed(f"obs-fold (a line that starts with whitespace): {line[:60]!r}")
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise Malformed(f"not a header line: {line[:80]!r}")
        headers.append((match[1].decode("latin-1"), match[2].decode("latin-1")))
    request_bytes = end + 4
    method, target = first[1].decode("ascii"), first[2].decode("ascii")
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te:
        if cl:
            raise Malformed("both Content-Length and Transfer-Encoding")
        if len(te) != 1 or te[0].lower() != "chunked":
            raise Malformed(f"transfer codings other than one 'chunked': {te!r}")
        chunked = _parse_chunked(data, request_bytes)
        if chunked is None:
            return None
        body, used = chunked
        framing = "chunked"
    elif cl:
        if len(cl) != 1 or not _DIGITS.fullmatch(cl[0]):
            raise Malformed(f"Content-Length must be one run of digits: {cl!r}")
        length = int(cl[0])
        if len(data) < request_bytes + length:
            return None
        body, used, framing = data[request_bytes:request_bytes + length], request_bytes + length, "length"
    else:
        body, used, framing = b"", request_bytes, "none"
    return Request(method, target, tuple(headers), bytes(body), framing, bytes(data[:used])), used


def _check_partial_head(data: bytes) -> None:
    """Fail early on a head that can never become well formed (so a desync shows at once)."""
    complete_lines = data.split(b"\r\n")[:-1]
    for line in complete_lines:
        if b"\n" in line or b"\r" in line:
            raise Malformed(f"a bare CR or LF in {line[:60]!r}")
    if complete_lines and _REQUEST_LINE.fullmatch(complete_lines[0]) is None:
        raise Malformed(f"not a request line: {complete_lines[0][:80]!r}")


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
        if eol < 0:
            if len(data) - pos >= MAX_CHUNK_LINE or b"\n" in data[pos:]:
                raise Malformed(f"a chunk-size line that does not end in CRLF: {data[pos:pos + 40]!r}")
            return None
        line = data[pos:eol]
        if _CHUNK_SIZE.fullmatch(line) is None:
            raise Malformed(f"chunk extension or bad chunk size: {line[:40]!r}")
        size = int(line, 16)
        pos = eol + 2
        if size == 0:
            if len(data) < pos + 2:
                return None
            if data[pos:pos + 2] != b"\r\n":
                raise Malformed(f"trailer fields after the last chunk: {data[pos:pos + 60]!r}")
            return bytes(body), pos + 2
        if len(data) < pos + size + 2:
            return None
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise Malformed("a chunk that is not followed by CRLF")
        body += data[pos:pos + size]
        pos += size + 2


def parse_stream(data: bytes) -> tuple[list[Request], bytes, str | None]:
    """A connection's bytes -> the requests in it, the bytes left over, and the parse error if any."""
    requests: list[Request] = []
    pos = 0
    while pos < len(data):
        try:
            parsed = parse_request(data[pos:])
        except Malformed as exc:
            return requests, data[pos:], str(exc)
        if parsed is None:
            break
        requests.append(parsed[0])
        pos += parsed[1]
    return requests, data[pos:], None


# -- the recording upstream -------------------------------------------------------------------------

def answer_for(request: Request) -> bytes:
    """The upstream's answer: it names the request it answers, in a header and in the body."""
    body = f"{request.tag}\n".encode("latin-1")
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"X-Seen: {request.tag}\r\n\r\n").encode("latin-1")
    return head if request.method == "HEAD" else head + body


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass
class UpstreamConnection:
    number: int
    raw: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    error: str | None = None
    closed: bool = False


class RecordingUpstream:
    """Records the exact bytes of every connection; answers every request it can parse, in order."""

    def __init__(self, after_each_answer: bytes = b"") -> None:
        self.after_each_answer = after_each_answer   # bytes nobody asked for (a misbehaving upstream)
        self.connections: list[UpstreamConnection] = []
        self.port = 0
        self.received: list[Request] = []   # every request parsed, in the order they arrived
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed = asyncio.Event()

    async def start(self) -> RecordingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = UpstreamConnection(len(self.connections) + 1)
        self.connections.append(conn)
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                conn.raw += data
                conn.pending += data
                self._changed.set()
                if not self._answer_what_is_whole(conn, writer):
                    break
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            conn.closed = True
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._changed.set()

    def _answer_what_is_whole(self, conn: UpstreamConnection, writer: asyncio.StreamWriter) -> bool:
        """Answer every request now whole; False after a parse error (answered 400, then closed)."""
        while conn.pending:
            try:
                parsed = parse_request(bytes(conn.pending))
            except Malformed as exc:
                conn.error = str(exc)
                writer.write(BAD_REQUEST)
                self._changed.set()
                return False
            if parsed is None:
                return True
            request, used = parsed
            del conn.pending[:used]
            conn.requests.append(request)
            self.received.append(request)
            self._changed.set()
            writer.write(answer_for(request) + self.after_each_answer)
        return True

    def problems(self) -> list[str]:
        """Parse errors, and bytes left over on a connection (a request that never ended)."""
        out = []
        for conn in self.connections:
            if conn.error is not None:
                out.append(f"upstream connection {conn.number}: unparseable bytes ({conn.error}); "
                           f"raw={bytes(conn.raw)[-400:]!r}")
            elif conn.pending:
                out.append(f"upstream connection {conn.number}: {len(conn.pending)} bytes left over, "
                           f"never a whole request: {bytes(conn.pending)[:300]!r}")
        return out

    async def wait_all_closed(self, bound_s: float = BOUND_S) -> None:
        """Until every connection the gateway opened is closed: then every byte it sent is here."""
        async with asyncio.timeout(bound_s):
            while any(not c.closed for c in self.connections):
                self._changed.clear()
                await self._changed.wait()

    async def wait_bytes(self, count: int, bound_s: float = BOUND_S) -> None:
        """Until the upstream has received at least ``count`` bytes, over all its connections."""
        async with asyncio.timeout(bound_s):
            while sum(len(c.raw) for c in self.connections) < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_received(self, count: int, bound_s: float = BOUND_S) -> None:
        async with asyncio.timeout(bound_s):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()

    def forget(self) -> None:
        """Drop what was recorded (only once every connection is closed)."""
        assert all(c.closed for c in self.connections)
        self.connections.clear()
        self.received.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def recording_upstream(after_each_answer: bytes = b"") -> AsyncIterator[RecordingUpstream]:
    up = await RecordingUpstream(after_each_answer).start()
    try:
        yield up
    finally:
        await up.close()


# -- the raw client -------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"Answer({self.status}, seen={self.header('X-Seen')!r}, body={self.body[:120]!r})"


class _AnswerReader:
    """httptools callbacks: collects whole answers; 1xx ones apart."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self.informational: list[int] = []
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._headers, self._body = [], bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational.append(status)
        else:
            self.answers.append(Answer(status, self._headers, bytes(self._body)))


class RawClient:
    """One client connection to the gateway: exact bytes out, parsed answers in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._answers = _AnswerReader()
        self._taken = 0
        self.closed = False          # the gateway closed the connection
        self.garbage: str | None = None   # bytes that are no HTTP answer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        async with asyncio.timeout(BOUND_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    @property
    def informational(self) -> list[int]:
        return self._answers.informational

    async def read_answers(self, count: int, bound_s: float = BOUND_S) -> list[Answer]:
        """The next ``count`` answers, or fewer when the gateway closes the connection or ``bound_s``
        passes first."""
        want = self._taken + count
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound_s):
                while len(self._answers.answers) < want and not self.closed and self.garbage is None:
                    try:
                        data = await self._reader.read(65536)
                    except ConnectionError:
                        data = b""
                    if not data:
                        self.closed = True
                        break
                    try:
                        self._answers.parser.feed_data(data)
                    except httptools.HttpParserError as exc:
                        self.garbage = f"{type(exc).__name__}: {data[:200]!r}"
        got = self._answers.answers[self._taken:want]
        self._taken += len(got)
        return got

    async def read_head_only(self, bound_s: float = BOUND_S) -> Answer | None:
        """The head of an answer without a body (to HEAD), read up to its blank line and no further:
        its bytes never reach the answer parser, so a body sent after it shows as the next answer."""
        try:
            async with asyncio.timeout(bound_s):
                head = await self._reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        return Answer(int(lines[0].split(" ")[1]), headers, b"")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


async def exchange(port: int, data: bytes, answers: int, bound_s: float = BOUND_S) -> tuple[list[Answer], RawClient]:
    """Send ``data`` on a new connection, read up to ``answers`` answers, close."""
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        got = await client.read_answers(answers, bound_s)
    finally:
        await client.close()
    return got, client


# -- the gateway under test -----------------------------------------------------------------------

@dataclass
class ServedGateway:
    app: web.Application
    runner: GatewayRunner
    port: int
    lean: bool

    async def new_forwarder(self) -> None:
        """A fresh Forwarder (as a reload makes one): the old one's pooled upstream connections close."""
        gw = self.app[GATEWAY]
        old = gw.forwarder
        gw.forwarder = Forwarder(gw.config, watcher=old.watcher, lean=self.lean)
        await old.close()


@contextlib.asynccontextmanager
async def serve_gateway(cfg: GatewayConfig, *, lean: bool) -> AsyncIterator[ServedGateway]:
    """The real app on a free loopback port. ``lean=False``: every request goes through aiohttp's
    client (the app itself always builds a lean Forwarder; its Forwarder is swapped for one that isn't)."""
    app = build_app(cfg)
    runner = GatewayRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        await _until_ready(app)
        served = ServedGateway(app, runner, 0, lean)
        if not lean:
            await served.new_forwarder()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        served.port = int(runner.addresses[0][1])
        yield served
    finally:
        await runner.cleanup()


async def _until_ready(app: web.Application) -> None:
    """As ``serve`` does: the port opens once the revocation mirror has loaded (before that, every
    authenticated request would get 503)."""
    async with asyncio.timeout(BOUND_S):
        while not app[GATEWAY].ready:
            await asyncio.sleep(0.002)


# -- the trust rules for one forwarded request ------------------------------------------------------

# RFC 9110 7.6.1 and the legacy ones, plus Expect (the gateway answers it itself).
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "expect")
# Headers that state a client address, scheme, port, prefix or original URL/method: never from an
# untrusted peer (the gateway's own X-Forwarded-For/-Proto/-Host are checked apart).
FORWARDING = ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-original-url",
              "x-original-uri", "x-original-method", "x-rewrite-url", "x-forwarded-uri", "x-forwarded-method",
              "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl", "x-client-ip", "x-cluster-client-ip",
              "true-client-ip")
_GATEWAY_WRITTEN = frozenset({"content-length", "transfer-encoding", "host", "connection", "x-request-id",
                              "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
GATEWAY_COOKIES = ("access_token", "csrf_token", "refresh_token")
CLIENT_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Who:
    """The identity the gateway decided: a token's subject and roles, or nobody (public route)."""

    sub: str
    roles: tuple[str, ...]


def check_forwarded(req: Request, *, method: str, target: str, body: bytes | Sequence[bytes], who: Who | None,
                    upstream_host: str, identity_headers: Iterable[str], client_host: str | None = None,
                    client_connection: Sequence[str] = ()) -> list[str]:
    """Everything wrong with ``req`` (as the upstream received it) for a request the gateway
    decided to forward as ``method target`` with ``body`` for ``who``; ``client_connection``: the
    values of the client's Connection headers. Empty when it is right."""
    identity_headers = list(identity_headers)
    bodies = [body] if isinstance(body, bytes) else list(body)
    p: list[str] = []
    if (req.method, req.target) != (method, target):
        p.append(f"request line {req.tag!r}, expected {method} {target}")
    if req.body not in bodies:
        p.append(f"body of {len(req.body)} bytes {req.body[:80]!r}, "
                 f"expected {bodies[0][:80]!r} ({len(bodies[0])} bytes)")
    # Framing is the gateway's own: one length that is the body's, or chunked by the gateway.
    if req.framing == "length" and int(req.values("Content-Length")[0]) != len(req.body):
        p.append("Content-Length differs from the body")
    if req.framing == "none" and req.body:
        p.append("a body without framing")
    hosts = req.values("Host")
    if hosts != [upstream_host]:
        p.append(f"Host headers {hosts!r}, expected exactly [{upstream_host!r}]")
    # RFC 9110 7.6.1: what the client's Connection header lists is hop-by-hop too (but for the
    # headers the gateway writes itself, which it must still write).
    written = _GATEWAY_WRITTEN | {fold(n) for n in identity_headers}
    named = {t.strip().lower() for v in client_connection for t in v.split(",")} - {"", "keep-alive", "close"}
    for name in named:
        if req.values(name) and fold(name) not in written:
            p.append(f"header {name} named in the client's Connection header was forwarded: {req.values(name)!r}")
    for name in HOP_BY_HOP:
        if name == "connection":
            values = [v.strip().lower() for v in req.values(name)]
            if len(values) > 1 or any(v not in ("keep-alive", "close") for v in values):
                p.append(f"Connection headers the gateway did not write: {req.values(name)!r}")
        elif req.values(name):
            p.append(f"hop-by-hop header {name} forwarded: {req.values(name)!r}")
    if req.values("Authorization"):
        p.append("Authorization forwarded (identity.strip_authorization is on)")
    for name in FORWARDING:
        if found := req.folded(name):
            p.append(f"client-sent forwarding header reached the upstream: {found!r}")
    p += _check_single(req, "X-Forwarded-For", CLIENT_ADDRESS)
    p += _check_single(req, "X-Forwarded-Proto", "http")
    p += _check_single(req, "X-Request-Id", None)
    xfh = req.folded("X-Forwarded-Host")
    if len(xfh) > 1 or (xfh and (xfh[0][0].lower() != "x-forwarded-host" or xfh[0][1] != client_host)):
        p.append(f"X-Forwarded-Host {xfh!r}, expected at most the client's Host {client_host!r}")
    p += _check_identity(req, who, identity_headers)
    p += _check_cookies(req)
    return p


def _check_single(req: Request, name: str, value: str | None) -> list[str]:
    found = req.folded(name)
    if len(found) != 1 or found[0][0].lower() != name.lower() or (value is not None and found[0][1] != value):
        return [f"{name}: {found!r}, expected exactly one set by the gateway" + (f" ({value!r})" if value else "")]
    return []


def _check_identity(req: Request, who: Who | None, identity_headers: Iterable[str]) -> list[str]:
    names = list(identity_headers)
    if who is None:
        return [f"identity header on a public route: {found!r}" for n in names if (found := req.folded(n))]
    sub_header, roles_header, claims_header = names
    expected = {sub_header: who.sub, roles_header: ",".join(sorted(who.roles))}
    p = []
    for name, value in expected.items():
        found = req.folded(name)
        if found != [(name, value)]:
            p.append(f"identity {name}: {found!r}, expected exactly [{(name, value)!r}]")
    claims = req.folded(claims_header)
    if len(claims) != 1 or _claims_sub(claims[0][1]) != who.sub:
        p.append(f"{claims_header}: {claims!r}, expected exactly one for {who.sub!r}")
    return p


def _claims_sub(blob: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))).get("sub")
    except ValueError:
        return None


def _check_cookies(req: Request) -> list[str]:
    p = []
    for value in req.folded("Cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(value[1])
        names = set(jar) | {part.split("=", 1)[0].strip() for part in value[1].split(";")}
        if leaked := sorted(names & set(GATEWAY_COOKIES)):
            p.append(f"the gateway's own cookies {leaked} reached the upstream: {value[1]!r}")
    return p


# -- what one client's exchange should have done ------------------------------------------------------

HOST = "gw.test"   # what the test clients send as Host
IDENTITY_HEADERS = ("X-User-Id", "X-User-Roles", "X-Auth-Claims")
WHO = {"user": Who("alice", ("user",)), "admin": Who("boss", ("admin",))}
REFUSALS = frozenset(range(400, 500)) | {501}


def edge_sections(upstream_url: str, max_connections: int = 4) -> dict[str, Any]:
    """Config sections for these tests: every route on one upstream (the recording one), browser mode
    on (so the access, CSRF and refresh cookies are all the gateway's own)."""
    return {
        "upstreams": {"accounts": {"url": upstream_url, "max_connections": max_connections, "timeout": "2s",
                                   "connect_timeout": "1s"},
                      "orders": {"url": upstream_url}},
        "routes": [
            {"path": "/api/public", "upstream": "accounts", "public": True},
            {"path": "/api/admin", "upstream": "accounts", "roles": ["admin"]},
            {"path": "/api/orders", "upstream": "accounts", "roles": ["user", "admin"]},
        ],
        "identity": {"headers": {"sub": "X-User-Id", "roles": "X-User-Roles"}, "claims_header": "X-Auth-Claims"},
        "auth": {"access_cookie": True},
    }


@dataclass(frozen=True)
class Fwd:
    """Forwarded, exactly once, as ``method target`` with ``body`` (any of them when a tuple) for ``who``."""

    method: str
    target: str
    body: bytes | tuple[bytes, ...] = b""
    who: str | None = None
    client_host: tuple[str | None, ...] = (HOST,)   # what X-Forwarded-Host may say
    client_connection: tuple[str, ...] = ()          # the client's Connection header values


@dataclass(frozen=True)
class Refuse:
    """Answered with a refusal; never reaches the upstream. ``closes``: the connection closes after it."""

    statuses: frozenset[int] = REFUSALS
    closes: bool = False


class Either:
    """Refused, or forwarded as one of ``fwds``: a request RFC 9112 lets a server reject or read in
    one of a few ways (the one taken is the one the upstream's answer names)."""

    def __init__(self, *fwds: Fwd) -> None:
        self.fwds = fwds

    def taken(self, answer: Answer) -> Fwd | Refuse:
        if answer.status != 200:
            return Refuse()
        return next((f for f in self.fwds if answer.header("X-Seen") == f"{f.method} {f.target}"), self.fwds[0])


Expect = Fwd | Refuse | Either


def req(request_line: str, *lines: str, body: bytes = b"", host: str | None = HOST) -> bytes:
    """A request's exact bytes: the request line, Host (unless None), ``lines``, CRLF, ``body``."""
    head = [request_line, *([f"Host: {host}"] if host is not None else []), *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def length(body: bytes) -> str:
    return f"Content-Length: {len(body)}"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


_CONNECTION_LINE = re.compile(rb"^connection[ \t]*:(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


def connection_values(raw: bytes) -> tuple[str, ...]:
    """The values of the Connection headers in the head of the first request in ``raw``."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return tuple(v.strip().decode("latin-1") for v in _CONNECTION_LINE.findall(head))


def fill(raw: bytes, tokens: dict[bytes, bytes]) -> bytes:
    for placeholder, token in tokens.items():
        raw = raw.replace(placeholder, token)
    return raw


def judge_answers(expect: Sequence[Expect], answers: list[Answer], client: RawClient,
                  may_close_after_refusal: bool = False) -> tuple[list[str], list[Fwd]]:
    """Everything wrong with one client's answers, and the requests that were forwarded (in order)."""
    problems: list[str] = []
    forwarded: list[Fwd] = []
    refused_before = False
    for i, exp in enumerate(expect, 1):
        answer = answers[i - 1] if i <= len(answers) else None
        if answer is None:
            if not (may_close_after_refusal and refused_before and client.closed):
                problems.append(f"request {i}: no answer (connection closed: {client.closed}, "
                                f"unparseable answer: {client.garbage})")
            continue
        kind: Fwd | Refuse = exp.taken(answer) if isinstance(exp, Either) else exp
        if isinstance(kind, Refuse):
            refused_before = True
            if answer.status not in kind.statuses:
                problems.append(f"request {i}: answered {answer!r}, expected a refusal in {sorted(kind.statuses)}")
            continue
        forwarded.append(kind)
        tag = f"{kind.method} {kind.target}"
        if answer.status != 200 or answer.header("X-Seen") != tag or answer.body != f"{tag}\n".encode():
            problems.append(f"request {i}: answered {answer!r}, expected the upstream's answer to {tag!r}")
    if len(answers) > len(expect):
        problems.append(f"more answers than requests: {answers[len(expect):]!r}")
    if not forwarded and client.informational:
        problems.append(f"interim answers {client.informational} to requests that were not forwarded")
    return problems, forwarded


def match_upstream(forwarded: Sequence[Fwd], up: RecordingUpstream) -> list[str]:
    """The upstream received exactly ``forwarded``, in order, each once and as the gateway decided."""
    problems = list(up.problems())
    got = [r.tag for r in up.received]
    want = [f"{f.method} {f.target}" for f in forwarded]
    if got != want:
        problems.append(f"the upstream received {got!r}, expected exactly {want!r}")
    host = f"127.0.0.1:{up.port}"
    unmatched = list(up.received)
    for fwd in forwarded:   # each expected request against the first received one of the same line
        seen = next((r for r in unmatched if r.tag == f"{fwd.method} {fwd.target}"), None)
        if seen is None:
            continue
        unmatched.remove(seen)
        found = _check_one(seen, fwd, host)
        if found:
            problems += [f"upstream request {seen.tag!r}: {p}" for p in found]
            problems.append(f"upstream request {seen.tag!r} as received: {seen.raw[:1500]!r}")
    problems += [f"a request nobody was authorised to send reached the upstream: {r.raw[:600]!r}" for r in unmatched]
    return problems


def _check_one(seen: Request, fwd: Fwd, upstream_host: str) -> list[str]:
    bodies = fwd.body if isinstance(fwd.body, tuple) else (fwd.body,)
    who = WHO[fwd.who] if fwd.who else None
    found: list[str] = []
    for client_host in fwd.client_host:   # right for any of the X-Forwarded-Host values allowed
        found = check_forwarded(seen, method=fwd.method, target=fwd.target, body=bodies, who=who,
                                upstream_host=upstream_host, identity_headers=IDENTITY_HEADERS,
                                client_host=client_host, client_connection=fwd.client_connection)
        if not found:
            return []
    return found
