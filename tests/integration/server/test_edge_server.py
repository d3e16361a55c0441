"""The edge of the gateway's own HTTP server, byte for byte over raw sockets (DESIGN "HTTP behaviour"):
listen.header_timeout bounds reading a head (408, or a plain close when nothing came), listen.idle_timeout
closes idle keep-alive connections, a refused request's unread body is never read, the parser's own
refusals are JSON, every answer carries X-Request-Id and no Server header of the gateway's own, and
while a port drains every answer says Connection: close and ends its connection (test_drain.py: SIGTERM).

The ports are served as ``serve`` serves them (server.runner_for), in this process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.test_utils import TestServer

from gateway.admin.routes import SERVING, build_admin_app
from gateway.pipeline import GATEWAY
from gateway.server.app import build_app
from gateway.server.edge import EdgeRunner, EdgeServer
from gateway.server.serve import ADMIN, PROXY, runner_for

from ..conftest import StartUpstream
from ..rawupstream import OK, RawUpstream

pytestmark = pytest.mark.integration
BOUND_S = 5.0   # the longest any single wait here may take
FAST = {"header_timeout": "1s"}


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One answer framed by Content-Length (every answer in these tests is)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines if line)]
    answer = Answer(int(status_line.split(" ")[1]), headers, b"")
    assert not answer.values("Transfer-Encoding"), head
    if answer.status != 101:
        answer.body = await asyncio.wait_for(reader.readexactly(int((answer.values("Content-Length") or ["0"])[0])),
                                             BOUND_S)
    return answer


async def closed_by_server(reader: asyncio.StreamReader, bound_s: float = BOUND_S) -> bool:
    """Whether the server closed the connection (EOF or reset) within ``bound_s``, sending nothing more."""
    try:
        return await asyncio.wait_for(reader.read(), bound_s) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: gw.test", *headers, "", ""]).encode()


@dataclass
class Edge:
    port: int
    admin_port: int
    servers: tuple[EdgeServer, ...] = ()   # the proxy port's and the admin port's

    def start_draining(self) -> None:
        """As SIGTERM's drain does, without closing the listeners: every answer from now on closes."""
        for server in self.servers:
            server.draining = True

    async def connect(self, admin: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.admin_port if admin else self.port)

    async def ask(self, request: bytes, admin: bool = False) -> Answer:
        reader, writer = await self.connect(admin)
        try:
            writer.write(request)
            await writer.drain()
            return await read_answer(reader)
        finally:
            writer.close()


ServeEdge = Callable[..., Any]


@pytest.fixture
async def serve_edge(make_config: Callable[..., Any], echo_upstream: TestServer) -> AsyncIterator[ServeEdge]:
    """serve_edge(listen={...}, upstream_url=...) -> the proxy and admin ports, served as serve does."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(listen: dict[str, Any] | None = None, upstream_url: str | None = None) -> Edge:
            url = upstream_url or str(echo_upstream.make_url("")).rstrip("/")
            routes = [{"path": "/api/public", "upstream": "accounts", "public": True},
                      {"path": "/api/orders", "upstream": "orders", "roles": ["user"]},
                      {"path": "/_echo", "upstream": "accounts", "public": True}]
            cfg = await asyncio.to_thread(make_config, listen=listen or {}, routes=routes,
                                          upstreams={"accounts": {"url": url}, "orders": {"url": url}})
            main_app = build_app(cfg)
            admin_app = build_admin_app(main_app)
            ports, servers = [], []
            for app, port in ((main_app, PROXY), (admin_app, ADMIN)):
                runner = runner_for(app, cfg, port)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                if app is main_app:
                    assert await main_app[GATEWAY].denylist.first_load(BOUND_S)   # as serve waits for it
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                ports.append(int(runner.addresses[0][1]))
                assert isinstance(runner.server, EdgeServer)
                servers.append(runner.server)
            admin_app[SERVING].accepting = True
            return Edge(*ports, servers=tuple(servers))

        yield start


def assert_json_error(answer: Answer, status: int, code: str) -> None:
    assert (answer.status, answer.json()["code"]) == (status, code), answer
    assert answer.values("Content-Type")[0].startswith("application/json")
    assert len(answer.values("X-Request-Id")) == 1
    assert answer.values("Connection") == ["close"]
    assert answer.values("Server") == []


# -- 1. listen.header_timeout -----------------------------------------------------------------------

async def dribble(writer: asyncio.StreamWriter, data: bytes, pause_s: float) -> None:
    """Send ``data`` a byte at a time until it is all sent or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(pause_s)


async def test_a_head_sent_byte_by_byte_gets_408_after_header_timeout(serve_edge):
    edge = await serve_edge(listen=FAST)
    reader, writer = await edge.connect()
    started = time.monotonic()
    slowloris = asyncio.create_task(dribble(writer, get("/api/public/x", "X-Pad: " + "p" * 200), 0.05))
    try:
        answer = await read_answer(reader)
        took_s = time.monotonic() - started
        assert_json_error(answer, 408, "request_timeout")
        assert await closed_by_server(reader)
    finally:
        slowloris.cancel()
        writer.close()
    assert 0.9 <= took_s < 3.0


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(serve_edge):
    edge = await serve_edge(listen=FAST)
    reader, writer = await edge.connect()
    started = time.monotonic()
    try:
        assert await closed_by_server(reader)   # nothing came, so nothing is answered
    finally:
        writer.close()
    assert 0.9 <= time.monotonic() - started < 3.0


async def test_on_keep_alive_the_next_head_is_timed_from_its_own_first_byte(serve_edge):
    edge = await serve_edge(listen={"header_timeout": "1s", "idle_timeout": "10s"})
    reader, writer = await edge.connect()
    try:
        writer.write(get("/_echo/status/200"))
        assert (await read_answer(reader)).status == 200
        await asyncio.sleep(1.5)   # idle for longer than header_timeout, well within idle_timeout
        writer.write(get("/_echo/status/200"))
        assert (await read_answer(reader)).status == 200
        writer.write(b"GET /_echo/status/200 HTTP/1.1\r\nHost: gw.test\r\n")   # a head that never ends
        started = time.monotonic()
        assert_json_error(await read_answer(reader), 408, "request_timeout")
        assert 0.9 <= time.monotonic() - started < 3.0
        assert await closed_by_server(reader)
    finally:
        writer.close()


async def test_a_slow_body_upload_is_not_cut_by_the_head_timer(serve_edge):
    edge = await serve_edge(listen=FAST)
    reader, writer = await edge.connect()
    body = b"b" * 30
    try:
        writer.write(f"POST /_echo/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await dribble(writer, body, 0.08)   # 2.4 s, far beyond header_timeout, never silent for long
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200, answer
    assert answer.json()["body"] == body.decode()


# -- 2. listen.idle_timeout -------------------------------------------------------------------------

async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(serve_edge):
    edge = await serve_edge(listen={"idle_timeout": "1s"})
    reader, writer = await edge.connect()
    try:
        writer.write(get("/_echo/status/200"))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.values("Connection") != ["close"]
        finished = time.monotonic()
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert 0.9 <= time.monotonic() - finished < 3.5


# -- 3. a refused request's unread body is not read -------------------------------------------------

async def test_a_refused_upload_gets_its_answer_and_the_rest_of_its_body_is_never_read(serve_edge):
    edge = await serve_edge()
    announced, chunk = 100 * 1024 * 1024, b"x" * 65536
    reader, writer = await edge.connect()
    try:
        writer.write(f"POST /api/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {announced}\r\n\r\n".encode()
                     + chunk)
        await writer.drain()
        assert_json_error(await read_answer(reader), 401, "missing_token")
        sent = len(chunk)
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(BOUND_S):
                while sent < announced:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
    finally:
        writer.close()
    # What went before the reset sits in socket buffers on both sides, nothing more: a gateway that
    # read on (aiohttp lingers ~150 MB/s for 10 s) would have taken all 100 MB.
    assert sent < 32 * 1024 * 1024


async def test_a_refused_request_whose_body_came_whole_keeps_its_connection(serve_edge):
    edge = await serve_edge()
    reader, writer = await edge.connect()
    try:
        writer.write(b"POST /api/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello")
        answer = await read_answer(reader)
        assert (answer.status, answer.json()["code"]) == (401, "missing_token")
        assert answer.values("Connection") != ["close"]
        writer.write(get("/_echo/status/200"))
        assert (await read_answer(reader)).status == 200
    finally:
        writer.close()


# -- 4. the parser's own refusals -------------------------------------------------------------------

# Each head, and a part of it that the answer must not echo.
MALFORMED = {
    "header_without_colon": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"Bad Header"),
    "invalid_method": (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", b"u0001T"),
    "bad_version": (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", b"1.x"),
    "nul_in_header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", b"X-A"),
    "header_too_long": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", b"aaaa"),
    "two_content_lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                            b"Content-Length"),
}


@pytest.mark.parametrize("head, echo", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_head_the_parser_refuses_gets_a_json_400_that_echoes_nothing(serve_edge, head, echo):
    edge = await serve_edge()
    reader, writer = await edge.connect()
    try:
        writer.write(head)
        answer = await read_answer(reader)
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert_json_error(answer, 400, "bad_request")
    assert set(answer.json()) == {"error", "error_description", "code"} and answer.json()["error"] == "invalid_request"
    assert echo not in answer.body


async def test_the_admin_port_refuses_a_malformed_head_the_same_way(serve_edge):
    edge = await serve_edge()
    assert_json_error(await edge.ask(MALFORMED["header_without_colon"][0], admin=True), 400, "bad_request")


async def test_an_error_that_escapes_every_handler_is_a_bare_json_500(make_config):
    async def buggy(request: web.Request) -> web.Response:
        raise RuntimeError("a bug, with a secret in its message")

    app = web.Application()   # no error middleware: the exception reaches aiohttp's handle_error
    app.router.add_get("/", buggy)
    runner = EdgeRunner(app, header_timeout_s=5.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        edge = Edge(int(runner.addresses[0][1]), 0)
        answer = await edge.ask(get("/", "X-Request-Id: bug-1", "Accept: text/html"))
    finally:
        await runner.cleanup()
    assert_json_error(answer, 500, "internal_error")
    assert answer.values("X-Request-Id") == ["bug-1"]
    assert b"secret" not in answer.body and b"Traceback" not in answer.body


# -- 5. X-Request-Id on every answer, no Server header of the gateway's own --------------------------

OWN_ANSWERS = {
    "jwks": get("/.well-known/jwks.json"),
    "openapi": get("/auth/openapi.json"),
    "login": b'POST /auth/login HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\n'
             b'Content-Length: 36\r\n\r\n{"username": "x", "password": "yyy"}',
    "verify": get("/auth/verify", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /api/orders"),
    "refusal": get("/api/orders"),
    "no_route": get("/nowhere"),
    "proxied": get("/_echo/status/201"),
}
ADMIN_ANSWERS = {"healthz": get("/healthz"), "readyz": get("/readyz"), "metrics": get("/metrics")}


@pytest.mark.parametrize("admin, request_bytes", [*((False, r) for r in OWN_ANSWERS.values()),
                                                  *((True, r) for r in ADMIN_ANSWERS.values())],
                         ids=[*OWN_ANSWERS, *ADMIN_ANSWERS])
@pytest.mark.parametrize("sent", [None, "client-req-42"])
async def test_every_answer_carries_a_request_id_and_no_server_header_of_the_gateway(serve_edge, admin, request_bytes,
                                                                                      sent):
    edge = await serve_edge()
    if sent is not None:
        request_bytes = request_bytes.replace(b"\r\n", f"\r\nX-Request-Id: {sent}\r\n".encode(), 1)
    answer = await edge.ask(request_bytes, admin=admin)
    assert answer.status < 500, answer
    (request_id,) = answer.values("X-Request-Id")
    assert request_id == sent if sent is not None else len(request_id) == 36
    if request_bytes.startswith(b"GET /_echo"):
        # The upstream's own Server header is relayed as it is, even with the very text of aiohttp's.
        assert answer.values("Server") == [SERVER_SOFTWARE]
    else:
        assert answer.values("Server") == []


async def test_an_upstream_answer_without_server_header_gets_none(serve_edge, raw_upstream: StartUpstream):
    async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await upstream.answer_each(reader, writer, OK)

    upstream: RawUpstream = await raw_upstream(answer_ok)
    edge = await serve_edge(upstream_url=upstream.url)
    answer = await edge.ask(get("/api/public/x"))
    assert answer.status == 200 and answer.body == b"ok"
    assert answer.values("Server") == []
    assert len(answer.values("X-Request-Id")) == 1


async def test_a_websocket_handshake_answer_carries_a_request_id_and_no_gateway_server_header(serve_edge):
    edge = await serve_edge()
    key = base64.b64encode(os.urandom(16)).decode()
    answer = await edge.ask(get("/_echo/ws", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                                f"Sec-WebSocket-Key: {key}", "X-Request-Id: ws-1"))
    assert answer.status == 101
    assert answer.values("X-Request-Id") == ["ws-1"]
    assert answer.values("Server") == []


# -- 6. draining: every answer is the connection's last and says so -----------------------------------

DRAINED_ANSWERS = {"own": (False, "/api/orders", 401), "proxied": (False, "/_echo/status/201", 201),
                   "admin": (True, "/healthz", 200)}


@pytest.mark.parametrize("admin, path, status", DRAINED_ANSWERS.values(), ids=DRAINED_ANSWERS.keys())
@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_while_draining_the_next_answer_on_a_keep_alive_connection_says_close_and_closes_it(
        serve_edge, admin, path, status, version):
    edge = await serve_edge()
    ask = f"GET {path} HTTP/{version}\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n".encode()
    reader, writer = await edge.connect(admin)
    try:
        writer.write(ask)
        before = await read_answer(reader)
        assert before.status == status, before
        assert before.values("Connection") == (["keep-alive"] if version == "1.0" else [])
        edge.start_draining()
        writer.write(ask)   # the same keep-alive connection's next request
        after = await read_answer(reader)
        assert after.status == status, after
        assert after.values("Connection") == ["close"]   # for HTTP/1.0 instead of its keep-alive
        assert await closed_by_server(reader)
    finally:
        writer.close()
