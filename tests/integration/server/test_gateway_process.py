"""The real ``tokengate serve`` process over real sockets, in front of a real recording upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.store.base import DENY_INDEX, DENY_VALUES
from loadtests.procs import Child, python, spawn, stop_process, wait_ready
from tests.conftest import ISSUER, base_config, bearer
from tests.integration.gatewayproc import GatewayProcess, free_port, spawn_gateway, wait_until_ready
from tests.tlsfiles import server_context, write_tls_files

pytestmark = pytest.mark.integration


@dataclass
class Recorder:
    """A real upstream: records every request it gets; /slow waits until the test releases it."""

    received: list[dict[str, Any]] = field(default_factory=list)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"method": request.method, "path": request.raw_path,
                              "headers": list(request.headers.items()), "body": body})
        if request.path.endswith("/slow"):
            self.slow_started.set()
            try:
                await asyncio.wait_for(self.release.wait(), 20)
            except asyncio.CancelledError:
                self.cancelled.set()   # the gateway dropped our connection
                raise
        return web.json_response({"ok": True, "path": request.raw_path})

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def last_headers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in self.received[-1]["headers"]:
            out.setdefault(name.lower(), []).append(value)
        return out


@pytest.fixture
async def recorder(aiohttp_server: Callable[..., Any]) -> Recorder:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    rec.server = await aiohttp_server(app)
    return rec


def gateway_config(keys_dir: Path, upstream_url: str, timeout: str = "5s", **extra: Any) -> dict[str, Any]:
    cfg = base_config(keys_dir)
    cfg["upstreams"] = {"accounts": {"url": upstream_url, "timeout": timeout},
                        "orders": {"url": upstream_url, "timeout": timeout}}
    cfg["identity"] = {"claims_header": "X-Auth-Claims", "assertion_header": "X-Auth-Assertion"}
    cfg.update(extra)
    return cfg


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> GatewayProcess:
    return await start_gateway(gateway_config(keys_dir, recorder.url))


async def raw_request(port: int, head: str) -> tuple[int, bytes]:
    """Send ``head`` byte for byte (no client library normalising the path); return status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def raw_get(path: str, *headers: str) -> str:
    lines = [f"GET {path} HTTP/1.1", "Host: gw.test", "Connection: close", *headers]
    return "\r\n".join(lines) + "\r\n\r\n"


async def test_valid_token_is_forwarded_with_identity_headers(gateway, recorder, http, mint):
    token = mint(sub="alice", roles=["user"], email="alice@example.test")
    async with http.get(f"{gateway.url}/api/orders/7?x=1", headers=bearer(token)) as resp:
        assert resp.status == 200
    seen = recorder.last_headers()
    assert recorder.received[-1]["path"] == "/api/orders/7?x=1"
    assert seen["x-user-id"] == ["alice"]
    assert seen["x-user-roles"] == ["user"]
    assert seen["x-user-email"] == ["alice@example.test"]
    assert "authorization" not in seen
    claims = json.loads(base64.urlsafe_b64decode(seen["x-auth-claims"][0] + "=="))
    assert claims["sub"] == "alice"


async def test_assertion_header_verifies_with_the_gateway_jwks(gateway, recorder, http, mint):
    async with http.get(f"{gateway.url}/api/orders", headers=bearer(mint(roles=["user"]))) as resp:
        assert resp.status == 200
    async with http.get(f"{gateway.url}/.well-known/jwks.json") as resp:
        assert resp.status == 200
        assert "max-age" in resp.headers["Cache-Control"]
        jwks = jwt.PyJWKSet.from_dict(await resp.json())
    assertion = recorder.last_headers()["x-auth-assertion"][0]
    kid = jwt.get_unverified_header(assertion)["kid"]
    assert kid == "rsa1"        # the signing key is HS256, whose secret is never published
    claims = jwt.decode(assertion, jwks[kid].key, algorithms=["RS256"], audience="orders", issuer=ISSUER)
    assert claims["sub"] == "alice" and claims["roles"] == ["user"]
    assert claims["exp"] - claims["iat"] <= 60


async def test_client_cannot_choose_its_identity_even_on_public_routes(gateway, recorder, http, mint):
    spoof = {"X-User-Id": "admin", "x-user-roles": "admin", "X-AUTH-CLAIMS": "e30"}
    async with http.get(f"{gateway.url}/api/public/x", headers=spoof) as resp:
        assert resp.status == 200
    seen = recorder.last_headers()
    assert "x-user-id" not in seen and "x-user-roles" not in seen and "x-auth-claims" not in seen
    status, _ = await raw_request(gateway.port, raw_get(
        "/api/orders", f"Authorization: Bearer {mint(sub='alice')}", "X-User-Id: admin", "x-user-id: root"))
    assert status == 200
    assert recorder.last_headers()["x-user-id"] == ["alice"]


@pytest.mark.parametrize("headers, challenge", [
    ({}, 'Bearer realm="tokengate"'),
    ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, 'Bearer realm="tokengate"'),
])
async def test_missing_token_gets_401_with_bare_challenge(gateway, recorder, http, headers, challenge):
    async with http.get(f"{gateway.url}/api/orders", headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == challenge
        assert (await resp.json())["error"] == "invalid_token"
    assert recorder.received == []


async def test_expired_token_gets_401_that_says_expired_and_never_echoes_it(gateway, recorder, http, mint):
    token = mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=None)
    async with http.get(f"{gateway.url}/api/orders", headers=bearer(token)) as resp:
        body = await resp.text()
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert "expired" in json.loads(body)["error_description"]
        assert (await resp.json())["code"] == "token_expired"
    for part in token.split("."):
        assert part not in body and part not in resp.headers["WWW-Authenticate"]
        assert part not in gateway.log()
    assert recorder.received == []


async def test_missing_role_gets_403_insufficient_scope(gateway, recorder, http, mint):
    async with http.get(f"{gateway.url}/api/admin/stats", headers=bearer(mint(roles=["user"]))) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "insufficient_scope"
    assert recorder.received == []


async def test_unmatched_path_gets_404_and_is_never_forwarded(gateway, recorder, http, mint):
    async with http.get(f"{gateway.url}/api/administrator", headers=bearer(mint(roles=["admin"]))) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "no_route"
    assert recorder.received == []


@pytest.mark.parametrize("path", ["/api/public/../admin/x", "/api/public/%2e%2E/admin/x",
                                  "/api/public/.%2e/admin/x", "//api//public/./..//admin/x"])
async def test_dot_segments_resolve_before_matching(gateway, recorder, path):
    status, _ = await raw_request(gateway.port, raw_get(path))
    assert status == 401          # it is /api/admin/x, which needs a token: not the public route
    assert recorder.received == []


@pytest.mark.parametrize("path", ["/api/public/..;/admin", "/api/admin;x=1", "/api/public%2F..%2Fadmin",
                                  "/api/public/%5c../admin", "/../api/public", "/api/public/%00"])
async def test_refused_path_forms_get_400_and_are_never_forwarded(gateway, recorder, path):
    status, body = await raw_request(gateway.port, raw_get(path))
    assert status == 400
    assert json.loads(body)["code"] == "bad_path"
    assert recorder.received == []


async def test_normalised_path_is_the_one_forwarded(gateway, recorder):
    status, _ = await raw_request(gateway.port, raw_get("/api/public/a/./b/../%7Ec//d?q=%2e"))
    assert status == 200
    assert recorder.received[-1]["path"] == "/api/public/a/~c/d?q=%2e"


async def test_two_authorization_headers_are_refused(gateway, recorder, mint):
    token = mint()
    status, _ = await raw_request(gateway.port, raw_get(
        "/api/orders", f"Authorization: Bearer {token}", f"Authorization: Bearer {token}"))
    assert status in (400, 401)
    assert recorder.received == []


async def test_upstream_down_gets_502(start_gateway, keys_dir, http, mint):
    gw = await start_gateway(gateway_config(keys_dir, f"http://127.0.0.1:{free_port()}"))
    async with http.get(f"{gw.url}/api/public/x") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "upstream_unavailable"


async def test_an_upstream_that_dies_and_comes_back_is_reached_again(start_gateway, keys_dir, http, tmp_path):
    """Pooled connections to a dead upstream are dropped, not reused: 502 while it is down, 200 again
    from the first request after it is back on the same port."""
    port = free_port()

    def start_upstream() -> Child:
        child = spawn("upstream", python("loadtests.upstream", "--port", str(port)), tmp_path)
        wait_ready(child, port)
        return child

    upstream = await asyncio.to_thread(start_upstream)
    try:
        gw = await start_gateway(gateway_config(keys_dir, f"http://127.0.0.1:{port}"))
        for _ in range(3):
            async with http.get(f"{gw.url}/api/public/x") as resp:
                assert resp.status == 200
        upstream.proc.kill()
        await asyncio.to_thread(upstream.proc.wait, 10)
        async with http.get(f"{gw.url}/api/public/x") as resp:
            assert resp.status == 502
        upstream = await asyncio.to_thread(start_upstream)
        for _ in range(3):
            async with http.get(f"{gw.url}/api/public/x") as resp:
                assert resp.status == 200
    finally:
        await asyncio.to_thread(upstream.stop)


async def test_an_https_upstream_is_reached_with_the_cas_the_environment_names(keys_dir, http, aiohttp_server,
                                                                                 tmp_path):
    ca, cert, key = write_tls_files(tmp_path)
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    upstream = await aiohttp_server(app, ssl=server_context(cert, key))
    gw = spawn_gateway(gateway_config(keys_dir, f"https://127.0.0.1:{upstream.port}"), tmp_path,
                       env={"SSL_CERT_FILE": str(ca)})
    try:
        await wait_until_ready(gw)
        async with http.post(f"{gw.url}/api/public/x", data=b"sealed") as resp:
            assert resp.status == 200
        assert rec.received[-1]["body"] == b"sealed"
    finally:
        gw.stop()


async def test_sigterm_drains_requests_in_flight_then_exits_0(gateway, recorder, http, mint):
    request = asyncio.ensure_future(http.get(f"{gateway.url}/api/public/slow"))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    gateway.proc.send_signal(signal.SIGTERM)
    await _until_refused(gateway.port)        # no new connections once draining
    recorder.release.set()
    async with await request as resp:
        assert resp.status == 200
    assert await asyncio.get_running_loop().run_in_executor(None, gateway.proc.wait, 15) == 0


async def test_client_hanging_up_cancels_the_upstream_call(start_gateway, recorder, keys_dir):
    # The upstream timeout is far beyond the wait below: only the hang-up can end the upstream call.
    gateway = await start_gateway(gateway_config(keys_dir, recorder.url, timeout="120s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(raw_get("/api/public/slow").encode())
    await writer.drain()
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    writer.close()
    await asyncio.wait_for(recorder.cancelled.wait(), 10)


async def _until_refused(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.02)
    raise AssertionError("the gateway still accepts connections after SIGTERM")


async def test_workers_share_one_port(start_gateway, recorder, keys_dir, http):
    gw = await start_gateway(gateway_config(keys_dir, recorder.url), "--workers", "2")
    pids: set[int] = set()
    deadline = time.monotonic() + 15
    while len(pids) < 2 and time.monotonic() < deadline:
        async with aiohttp.ClientSession() as fresh:     # new connection each time: the kernel spreads them
            async with fresh.get(f"{gw.admin_url}/healthz") as resp:
                pids.add((await resp.json())["pid"])
            async with fresh.get(f"{gw.url}/api/public/x") as resp:
                assert resp.status == 200
    assert len(pids) == 2
    assert gw.proc.pid not in pids
    assert gw.stop() == 0
    assert "every worker has a store of its own" in gw.log()   # memory:// is not shared between workers


async def test_port_in_use_is_a_clear_error(gateway, recorder, keys_dir, tmp_path):
    second = spawn_gateway(gateway_config(keys_dir, recorder.url), tmp_path, port=gateway.port)
    status = await asyncio.get_running_loop().run_in_executor(None, second.proc.wait, 20)
    assert status == 1
    assert "cannot listen" in second.log()
    assert "Traceback" not in second.log()


@pytest.fixture
async def echo_gateway(start_gateway, echo_upstream, keys_dir) -> GatewayProcess:
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["routes"] = [*cfg["routes"], {"path": "/_echo", "upstream": "accounts", "roles": ["user"]}]
    return await start_gateway(cfg)


async def test_websocket_on_a_protected_route_needs_a_token_and_then_proxies_both_ways(echo_gateway, http, mint):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{echo_gateway.url}/_echo/ws")
    assert refused.value.status == 401
    async with http.ws_connect(f"{echo_gateway.url}/_echo/ws", headers=bearer(mint(roles=["user"]))) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(timeout=10)).data == b"\x00\x01"


async def test_sse_streams_through_the_gateway_event_by_event(echo_gateway, echo_state, http, mint):
    url = f"{echo_gateway.url}/_echo/sse?n=3&hold=1"
    async with http.get(url, headers=bearer(mint(roles=["user"]))) as resp:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)   # the last event is still held back
        assert first.startswith(b"data:") or b"data:" in first
        echo_state.release.set()
        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert rest.count(b"data:") == 2


async def test_trace_is_never_proxied(echo_gateway, http, mint):
    async with http.request("TRACE", f"{echo_gateway.url}/api/public/x") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_refused"


@pytest.fixture
async def strict_echo_gateway(start_gateway, echo_upstream, keys_dir) -> GatewayProcess:
    """Like echo_gateway, with no leeway: a token dies exactly at its exp."""
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["tokens"]["leeway"] = "0s"
    cfg["routes"] = [*cfg["routes"], {"path": "/_echo", "upstream": "accounts", "roles": ["user"]}]
    return await start_gateway(cfg)


async def test_websocket_is_closed_with_1008_when_its_token_expires(strict_echo_gateway, http, mint):
    token = mint(roles=["user"], exp=int(time.time()) + 2)
    async with http.ws_connect(f"{strict_echo_gateway.url}/_echo/ws", headers=bearer(token)) as ws:
        await ws.send_str("still alive")
        assert (await ws.receive(timeout=5)).data == "still alive"
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


async def test_streamed_answer_is_cut_when_its_token_expires(strict_echo_gateway, echo_state, http, mint):
    token = mint(roles=["user"], exp=int(time.time()) + 2)
    async with http.get(f"{strict_echo_gateway.url}/_echo/sse?n=3&hold=1", headers=bearer(token)) as resp:
        assert resp.status == 200
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        with pytest.raises(aiohttp.ClientPayloadError):   # cut, not ended cleanly
            await asyncio.wait_for(resp.content.read(), 10)
    assert not echo_state.release.is_set()


async def _until_logged(gw: GatewayProcess, text: str, count: int = 1, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while gw.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{gw.log()}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_the_users_file_and_keeps_the_old_accounts_when_it_is_broken(
        start_gateway, recorder, keys_dir, tmp_path, workers):
    users = tmp_path / "users.yaml"
    users.write_text("[]\n")
    gw = await start_gateway(gateway_config(keys_dir, recorder.url, auth={"users": {"file": str(users)}}),
                             "--workers", workers)
    expected = int(workers)
    await _until_logged(gw, "tokengate serving on", expected)
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, "SIGHUP: reloaded 0 accounts", expected)
    users.write_text("- {username: x, password_hash: not-argon2}\n")
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, "the old accounts stay", expected)
    assert gw.proc.poll() is None
    assert gw.stop() == 0


@pytest.mark.parametrize("sent", [None, "client-req-42"])
async def test_refusals_carry_the_request_id(gateway, recorder, http, sent):
    """The gateway's own answers (401 here) echo a sane client X-Request-Id, or carry a fresh one."""
    headers = {"X-Request-Id": sent} if sent else {}
    async with http.get(f"{gateway.url}/api/orders", headers=headers) as resp:
        assert resp.status == 401
        rid = resp.headers["X-Request-Id"]
    assert rid == sent if sent else uuid.UUID(rid).version == 4


async def test_paths_under_the_auth_prefix_that_are_no_endpoint_still_follow_the_routes(gateway, recorder, http):
    """Requests under auth.prefix take the app's router; what it does not serve gets the same
    answer as anywhere else (here: no route)."""
    async with http.get(f"{gateway.url}/auth/nothing-here") as resp:
        assert resp.status == 404 and (await resp.json())["code"] == "no_route"
    async with http.get(f"{gateway.url}/.well-known/jwks.json") as resp:
        assert resp.status == 200 and "keys" in await resp.json()
    assert recorder.received == []


async def test_expect_100_continue_gets_its_interim_answer_and_the_body_goes_through(gateway, recorder):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        async with asyncio.timeout(5):
            writer.write(b"POST /api/public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"   # before the body
            writer.write(b"hello")
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert recorder.received[-1]["body"] == b"hello"


async def test_a_refused_request_gets_no_100_continue_and_its_body_is_not_read(gateway, recorder):
    """100 Continue only once the request is going to be forwarded: a client without a token gets its
    401 at once, never an invitation to upload, and the connection closes after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        async with asyncio.timeout(5):
            writer.write(b"POST /api/orders HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 30000000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            answer = await reader.read()   # until the gateway closes: it never waits for the body
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in answer
    assert recorder.received == []


async def test_an_unknown_expectation_gets_417(gateway, recorder):
    status, _ = await raw_request(gateway.port, "POST /api/public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\n"
                                                "Expect: something-else\r\nConnection: close\r\n\r\n")
    assert status == 417 and not recorder.received


# -- start-up: the first revocation load, ports that are taken ------------------------------------

REVOCATIONS_AT_START = 200_000   # enough that loading them takes far longer than a first request


async def _fill_revocations(url: str, count: int) -> None:
    """``count`` live jti revocations, written straight into the store's index (as revoke leaves them)."""
    expires_at = time.time() + 3600
    async with Redis.from_url(url) as client:
        for start in range(0, count, 20_000):
            members = [json.dumps(["jti", ISSUER, f"old-{i}"], separators=(",", ":"))
                       for i in range(start, start + 20_000)]
            pipe = client.pipeline(transaction=False)
            pipe.zadd(DENY_INDEX, {m: expires_at for m in members})
            pipe.hset(DENY_VALUES, mapping={m: "0" for m in members})
            await pipe.execute()


async def _first_status(port: int, token: str, timeout_s: float = 20.0) -> int:
    """The status of the very first request the port takes, sent the moment it accepts a connection."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            assert time.monotonic() < deadline, "the proxy port never opened"
            await asyncio.sleep(0.005)
    try:
        writer.write(raw_get("/api/orders/1", f"Authorization: Bearer {token}").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1])


async def test_a_new_instance_on_redis_opens_its_proxy_port_only_once_its_revocations_are_loaded(
        spawn_redis, recorder, keys_dir, tmp_path, mint):
    redis = spawn_redis()
    await _fill_revocations(redis.url, REVOCATIONS_AT_START)
    gw = spawn_gateway(gateway_config(keys_dir, recorder.url, store={"url": redis.url}), tmp_path)
    try:
        assert await _first_status(gw.port, mint(roles=["user"])) == 200   # never 503 while the store is fine
        log = gw.log()
        assert f"in sync: {REVOCATIONS_AT_START} entries" in log
        assert log.index("in sync:") < log.index("tokengate serving on")
    finally:
        gw.stop()


def _holder(shared: bool) -> socket.socket:
    """A listening socket of another program on a free loopback port; ``shared``: it allows SO_REUSEPORT."""
    sock = socket.socket()
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "reuseport"])
@pytest.mark.parametrize("which", ["proxy", "admin"])
async def test_a_port_that_is_taken_ends_serve_with_a_one_line_message(recorder, keys_dir, tmp_path, workers, shared,
                                                                        which):
    with _holder(shared) as holder:
        taken = holder.getsockname()[1]
        port, admin_port = (taken, free_port()) if which == "proxy" else (free_port(), taken)
        cfg = gateway_config(keys_dir, recorder.url, admin={"host": "127.0.0.1", "port": admin_port},
                             listen={"host": "127.0.0.1", "port": port, "workers": int(workers)})
        path = tmp_path / "taken.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.communicate(timeout=20))
        finally:
            stop_process(proc)
    lines = [line for line in out.decode().splitlines() if "cannot listen" in line]
    assert proc.returncode == 1, out.decode()
    assert len(lines) == 1 and f"127.0.0.1:{taken}" in lines[0] and f"{which} port" in lines[0], out.decode()
    assert "Traceback" not in out.decode()
