"""The access log through the real `tokengate serve` process: one JSON line a request with its
fields, never a token, cookie, password or Authorization value; `log` turns it off and picks text."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.conftest import bearer
from tests.integration.gatewayproc import GatewayProcess
from tests.integration.test_gateway_process import gateway_config, raw_get, raw_request
from tests.integration.test_token_lifecycle_process import PASSWORD, login, users_file

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
