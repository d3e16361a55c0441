"""The access log through the real `tokengate serve` process: one JSON line a request with its
fields, never a token, cookie, password or Authorization value; `log` turns it off and picks text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import bearer
from tests.integration.gatewayproc import GatewayProcess
from tests.integration.rawupstream import read_request
from tests.integration.server.test_gateway_process import gateway_config, raw_get, raw_request
from tests.integration.auth.test_token_lifecycle_process import PASSWORD, login, users_file

pytestmark = pytest.mark.integration


def access_lines(log: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]   # every line is JSON
    return [line for line in lines if line["logger"] == "tokengate.access"]


async def written_access_lines(gw: GatewayProcess, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The access lines once ``count`` are written (they are written in batches, within 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while len(lines := access_lines(gw.log())) < count:
        assert time.monotonic() < deadline, f"{len(lines)} access lines written, not {count}"
        await asyncio.sleep(0.02)
    return lines


@pytest.fixture
async def logged_gateway(start_gateway, echo_upstream, keys_dir, tmp_path) -> Any:
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["auth"] = {"users": {"file": str(users_file(tmp_path))}}
    return await start_gateway(cfg)


async def test_every_request_gets_one_access_line_and_no_secret_is_ever_written(logged_gateway, http, mint):
    gw = logged_gateway
    valid, expired = mint(sub="alice", roles=["user"]), mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    tokens = await login(http, gw)
    sent = [valid, expired, tokens["access_token"], tokens["refresh_token"], PASSWORD]
    async with http.get(f"{gw.url}/api/orders/7?x=1", headers={**bearer(valid), "X-Request-Id": "req-1"}) as resp:
        assert resp.status == 200
    async with http.get(f"{gw.url}/api/orders", headers=bearer(expired)) as resp:
        assert resp.status == 401
    async with http.get(f"{gw.url}/api/admin/x", headers=bearer(valid), cookies={"session": "cookie-secret"}) as resp:
        assert resp.status == 403
    async with http.get(f"{gw.url}/api/orders?access_token={valid}") as resp:   # never read from a query
        assert resp.status == 401
    assert (await raw_request(gw.port, raw_get("/api/%2e%2e/%2e%2e/etc", f"Authorization: Bearer {valid}")))[0] == 400
    lines = await written_access_lines(gw, 6)
    assert len(lines) == 6                                       # the login and the five above
    login_line, ok, expired_line, forbidden, query, bad_path = lines
    assert (login_line["path"], login_line["status"]) == ("/auth/login", 200)
    assert ok["request_id"] == "req-1" and ok["client"] == "127.0.0.1" and ok["method"] == "GET"
    assert (ok["path"], ok["route"], ok["upstream"], ok["subject"], ok["status"]) == \
        ("/api/orders/7", "GET /api/orders", "orders", "alice", 200)
    assert ok["duration_ms"] >= ok["upstream_ms"] > 0
    assert (expired_line["status"], expired_line["code"]) == (401, "token_expired")
    assert (forbidden["status"], forbidden["code"], forbidden["subject"]) == (403, "forbidden", "alice")
    assert (query["path"], query["code"]) == ("/api/orders", "missing_token")   # no query in the line
    assert (bad_path["status"], bad_path["code"]) == (400, "bad_path")
    log = gw.log()
    for secret in [*sent, "cookie-secret", "Bearer"]:
        assert secret not in log
    for part in valid.split("."):
        assert part not in log


async def test_log_section_turns_the_access_log_off_and_picks_text(start_gateway, echo_upstream, keys_dir, http,
                                                                   mint):
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["log"] = {"format": "text", "access": False, "level": "info"}
    gw = await start_gateway(cfg)
    async with http.get(f"{gw.url}/api/orders", headers=bearer(mint(roles=["user"]))) as resp:
        assert resp.status == 200
    log = gw.log()
    assert "tokengate serving on" in log and not log.lstrip().startswith("{")
    assert "tokengate.access" not in log


@pytest.fixture
async def echo_logged_gateway(start_gateway, echo_upstream, keys_dir) -> Any:
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["tokens"]["leeway"] = "0s"   # a token dies exactly at its exp
    cfg["routes"] = [*cfg["routes"], {"path": "/_echo", "upstream": "accounts", "roles": ["user"]}]
    return await start_gateway(cfg)


@pytest.mark.parametrize("closer", ["upstream", "client"])
async def test_a_websocket_session_is_logged_as_101_with_its_request_id_and_close_code(echo_logged_gateway, http,
                                                                                      mint, closer):
    gw = echo_logged_gateway
    headers = {**bearer(mint(sub="alice", roles=["user"])), "X-Request-Id": "ws-1"}
    async with http.ws_connect(f"{gw.url}/_echo/ws", headers=headers) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"
        if closer == "upstream":
            await ws.send_str("close:4001")   # the echo upstream ends the session with 4001
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
        else:
            await ws.close(code=4002)
    [line] = await written_access_lines(gw, 1)
    assert (line["status"], line["request_id"], line["subject"]) == (101, "ws-1", "alice")
    assert line["ws_close"] == (4001 if closer == "upstream" else 4002)
    assert line["duration_ms"] >= line["upstream_ms"] > 0 and "code" not in line


async def test_a_websocket_session_its_token_ended_is_logged_with_1008(echo_logged_gateway, http, mint):
    gw = echo_logged_gateway
    async with http.ws_connect(f"{gw.url}/_echo/ws", headers=bearer(mint(roles=["user"], exp=int(time.time()) + 2))) \
            as ws:
        assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
    [line] = await written_access_lines(gw, 1)
    assert (line["status"], line["ws_close"]) == (101, 1008)


async def test_an_upstream_that_breaks_off_inside_a_streamed_answer_is_logged_as_truncated(echo_logged_gateway,
                                                                                          http, mint):
    gw = echo_logged_gateway
    async with http.get(f"{gw.url}/_echo/broken?length=500000", headers=bearer(mint(roles=["user"]))) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):   # cut, never ended cleanly
            await resp.read()
    [line] = await written_access_lines(gw, 1)
    assert (line["status"], line["code"]) == (200, "upstream_truncated")


async def test_a_client_that_stops_reading_is_logged_as_stalled_not_as_a_broken_upstream(start_gateway, raw_upstream,
                                                                                         keys_dir, mint):
    size = 16 * 1024 * 1024   # more than the sockets between them hold

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                writer.write(b"z" * 65536)
                await writer.drain()   # blocks once the gateway stops reading

    up = await raw_upstream(script)
    cfg = gateway_config(keys_dir, up.url)
    cfg["listen"]["body_timeout"] = "1s"
    gw = await start_gateway(cfg)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.transport.pause_reading()   # type: ignore[attr-defined]   # reads nothing at all
    writer.write(f"GET /api/orders HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {mint(roles=['user'])}"
                 "\r\n\r\n".encode())
    await writer.drain()
    try:
        [line] = await written_access_lines(gw, 1, timeout_s=10)
    finally:
        writer.close()
    assert (line["status"], line["code"]) == (200, "client_stalled")
