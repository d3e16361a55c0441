"""Revocation at fleet speed: real gateway processes sharing a real Redis, the admin API and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import bearer, flush
from tests.integration.gatewayproc import GatewayProcess, free_port
from tests.integration.server.test_gateway_process import gateway_config

pytestmark = pytest.mark.integration
# A bound on polling, not a target: how fast a revocation spreads is measured by the kit (loadtests/README.md).
PROPAGATION_BOUND_S = 10.0


@pytest.fixture
async def clean_redis(redis_url: str) -> str:
    await flush(redis_url)
    return redis_url


def fleet_config(keys_dir: Path, upstream: Any, store_url: str, **store: Any) -> dict[str, Any]:
    cfg = gateway_config(keys_dir, str(upstream.make_url("")).rstrip("/"))
    cfg["store"] = {"url": store_url, **store}
    cfg["routes"] = [*cfg["routes"], {"path": "/_echo", "upstream": "accounts", "roles": ["user"]}]
    return cfg


async def status_of(http: aiohttp.ClientSession, gw: GatewayProcess, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.url}/api/orders", headers=bearer(token)) as resp:
        return resp.status, (await resp.json() if resp.status != 200 else {})


async def admin_revoke(http: aiohttp.ClientSession, gw: GatewayProcess, **body: Any) -> aiohttp.ClientResponse:
    async with http.post(f"{gw.admin_url}/admin/revoke", json=body) as resp:
        await resp.read()
        return resp


async def until_refused(http: aiohttp.ClientSession, gw: GatewayProcess, token: str,
                        limit_s: float = PROPAGATION_BOUND_S) -> None:
    """Poll until ``gw`` refuses ``token`` as revoked (fails past limit_s)."""
    deadline = time.monotonic() + limit_s
    while True:
        status, body = await status_of(http, gw, token)
        if status == 401:
            assert body["code"] == "token_revoked" and "revoked" in body["error_description"]
            return
        assert time.monotonic() < deadline, f"still accepted after {limit_s}s"
        await asyncio.sleep(0.01)


async def test_a_revocation_on_one_instance_reaches_another(
        start_gateway, echo_upstream, keys_dir, clean_redis, http, mint):
    # What is checked is that the revocation arrives (within PROPAGATION_BOUND_S), not how fast: each
    # instance's tokengate_revocation_mirror_lag_seconds shows that (loadtests/README.md section 6).
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    token = mint(roles=["user"])
    assert (await status_of(http, first, token))[0] == 200
    assert (await status_of(http, second, token))[0] == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (await admin_revoke(http, first, jti=jti)).status == 200
    assert (await status_of(http, first, token))[0] == 401          # at once where it was revoked
    await until_refused(http, second, token)
    assert (await status_of(http, second, mint(roles=["user"])))[0] == 200   # other tokens unaffected


async def test_cli_revoke_by_subject_ends_every_earlier_token_on_every_instance(
        start_gateway, echo_upstream, keys_dir, clean_redis, http, mint, tmp_path):
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    token = mint(sub="carol", roles=["user"], iat=int(time.time()) - 5)
    config_path = first.proc.args[first.proc.args.index("--config") + 1]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "revoke", "--config", config_path,
                                                "--sub", "carol", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"carol" in out
    (line,) = [json.loads(text) for text in err.decode().splitlines()]   # the operator's change is audited
    assert {k: line[k] for k in ("logger", "event", "subject", "session", "client", "request_id", "outcome",
                                 "kind", "target", "via")} == {
        "logger": "tokengate.audit", "event": "admin_revoke", "subject": "carol", "session": None, "client": None,
        "request_id": None, "outcome": "success", "kind": "sub", "target": "carol", "via": "cli"}
    for gw in (first, second):
        await until_refused(http, gw, token)
    later = mint(sub="carol", roles=["user"], iat=int(time.time()) + 2)   # issued after the watermark
    assert (await status_of(http, second, later))[0] == 200


async def test_admin_revoke_by_whole_token_on_the_embedded_store(start_gateway, echo_upstream, keys_dir, http, mint):
    gw = await start_gateway(fleet_config(keys_dir, echo_upstream, "memory://"))
    token = mint(roles=["user"])
    assert (await admin_revoke(http, gw, token=token)).status == 200
    assert (await status_of(http, gw, token))[0] == 401
    assert token not in gw.log()


@pytest.mark.parametrize("body", [{}, {"jti": "a", "sub": "b"}, {"token": "not-a-token"}, {"colour": "red"}])
async def test_admin_revoke_refuses_bad_requests(start_gateway, echo_upstream, keys_dir, http, body):
    gw = await start_gateway(fleet_config(keys_dir, echo_upstream, "memory://"))
    assert (await admin_revoke(http, gw, **body)).status == 400


async def test_revoked_tokens_websocket_is_closed_on_every_instance(
        start_gateway, echo_upstream, keys_dir, clean_redis, http, mint):
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    token = mint(roles=["user"])
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with http.ws_connect(f"{second.url}/_echo/ws", headers=bearer(token)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
        assert (await admin_revoke(http, first, jti=jti)).status == 200
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


@pytest.mark.parametrize("on_error, expected", [("deny", 503), ("allow", 200)])
async def test_store_down_at_start_follows_on_error(start_gateway, spawn_gateway_unready, keys_dir, echo_upstream,
                                                    http, mint, on_error, expected):
    dead = f"redis://127.0.0.1:{free_port()}"
    gw = await spawn_gateway_unready(fleet_config(keys_dir, echo_upstream, dead, on_error=on_error))
    async with http.get(f"{gw.admin_url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["store"] is False
    status, body = await status_of(http, gw, mint(roles=["user"]))
    assert status == expected
    if expected == 503:
        assert body["code"] == "dependency_unavailable"


async def test_mirror_resynchronises_after_redis_restarts(start_gateway, spawn_redis, echo_upstream, keys_dir,
                                                         http, mint):
    redis = spawn_redis()
    gw = await start_gateway(fleet_config(keys_dir, echo_upstream, redis.url))
    token = mint(roles=["user"])
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    redis.kill()
    await _until_status(http, gw, mint(roles=["user"]), 503)          # on_error: deny once it notices
    redis.restart()
    await _until_status(http, gw, mint(roles=["user"]), 200)
    assert (await admin_revoke(http, gw, jti=jti)).status == 200
    assert (await status_of(http, gw, token))[0] == 401


async def test_revocations_survive_a_gateway_restart(start_gateway, echo_upstream, keys_dir, clean_redis,
                                                     http, mint):
    cfg = fleet_config(keys_dir, echo_upstream, clean_redis)
    gw = await start_gateway(cfg)
    token = mint(roles=["user"])
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (await admin_revoke(http, gw, jti=jti)).status == 200
    assert gw.stop() == 0
    again = await start_gateway(cfg)
    assert (await status_of(http, again, token))[0] == 401


async def test_memory_store_says_at_start_that_its_revocations_die_with_the_process(
        start_gateway, echo_upstream, keys_dir):
    gw = await start_gateway(fleet_config(keys_dir, echo_upstream, "memory://"))
    assert "die with it" in gw.log()


async def _until_status(http, gw, token, status, limit_s=20.0):
    deadline = time.monotonic() + limit_s
    while (await status_of(http, gw, token))[0] != status:
        assert time.monotonic() < deadline, f"never answered {status}"
        await asyncio.sleep(0.05)
