"""/metrics on the real ``tokengate serve`` process: one worker and two (the counts add up across workers)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import bearer
from tests.integration.gatewayproc import GatewayProcess, free_port
from tests.integration.server.test_gateway_process import Recorder, gateway_config, recorder  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "m" * 40
PASSWORD = "correct horse battery staple"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gw: GatewayProcess, token: str | None = None) -> Samples:
    """One scrape over a fresh connection (with two workers, either may answer)."""
    headers = bearer(token) if token else {}
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(f"{gw.admin_url}/metrics", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def until(gw: GatewayProcess, check: Callable[[Samples], bool], token: str | None = None,
                limit_s: float = 15) -> Samples:
    """Scrape until ``check`` holds (folds happen each second and at each scrape), bounded."""
    deadline = time.monotonic() + limit_s
    while True:
        samples = await scrape(gw, token)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics never got there: {sorted(samples.items())}")
        await asyncio.sleep(0.1)


def config(keys_dir: Path, upstream_url: str, **extra: Any) -> dict[str, Any]:
    cfg = gateway_config(keys_dir, upstream_url, **extra)
    cfg["upstreams"]["dead"] = {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "2s"}
    cfg["routes"] = [*cfg["routes"], {"path": "/api/dead", "upstream": "dead", "public": True}]
    return cfg


@pytest.fixture
async def gw(start_gateway, recorder, keys_dir) -> GatewayProcess:  # noqa: F811
    return await start_gateway(config(keys_dir, recorder.url))


async def test_outcomes_are_counted_by_route_method_and_reason(gw, http, mint):
    token = mint(roles=["user"])
    expired = mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=None)
    sent = [("GET", "/api/orders/1", bearer(token), 200), ("GET", "/api/orders/2", bearer(token), 200),
            ("POST", "/api/orders", bearer(token), 403), ("GET", "/api/orders", bearer(expired), 401),
            ("GET", "/api/nowhere", bearer(token), 404), ("GET", "/api/dead/x", {}, 502)]
    for method, path, headers, status in sent:
        async with http.request(method, f"{gw.url}{path}", headers=headers) as resp:
            assert resp.status == status

    name = "tokengate_requests_total"
    samples = await until(gw, lambda s: total(s, name) >= len(sent))
    assert total(samples, name) == len(sent)
    assert total(samples, name, route="GET /api/orders", method="read", outcome="forwarded", reason="") == 2
    assert total(samples, name, method="read", outcome="401", reason="token_expired") == 1
    assert total(samples, name, method="write", outcome="403", reason="forbidden") == 1
    assert total(samples, name, route="none", outcome="404", reason="no_route") == 1
    assert total(samples, name, outcome="502") == 1
    assert total(samples, "tokengate_upstream_duration_seconds_count", upstream="orders") == 2
    assert total(samples, "tokengate_gateway_duration_seconds_count") == len(sent)
    # The second request with the same token was answered from the verified-token cache.
    assert total(samples, "tokengate_token_cache_lookups_total", result="hit") >= 1
    assert total(samples, "tokengate_revocation_mirror_in_sync") == 1


@pytest.fixture
async def echo_gw(start_gateway, echo_upstream, keys_dir) -> GatewayProcess:
    cfg = config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["routes"] = [*cfg["routes"], {"path": "/_echo", "upstream": "accounts", "roles": ["user"]}]
    return await start_gateway(cfg)


async def test_websocket_sessions_broken_answers_and_stages_are_counted(echo_gw, http, mint):
    token = mint(roles=["user"])
    async with http.ws_connect(f"{echo_gw.url}/_echo/ws", headers=bearer(token)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=10)).data == "hi"
    async with http.get(f"{echo_gw.url}/_echo/broken?length=500000", headers=bearer(token)) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):   # the upstream broke off inside the body
            await resp.read()

    name = "tokengate_requests_total"
    samples = await until(echo_gw, lambda s: total(s, name) >= 2)
    assert total(samples, name) == 2
    assert total(samples, name, route="* /_echo", method="read", outcome="forwarded", reason="") == 1   # the 101
    assert total(samples, name, route="* /_echo", outcome="upstream_broken", reason="upstream_truncated") == 1
    assert total(samples, "tokengate_upstream_duration_seconds_count", upstream="accounts") == 2
    assert total(samples, "tokengate_gateway_duration_seconds_count") == 1   # the session's length is not ours
    for stage in ("route", "token", "upstream"):
        assert total(samples, "tokengate_stage_duration_seconds_count", stage=stage) == 2
    # The token's first use was checked against the revocations; its second came from the cache.
    assert total(samples, "tokengate_stage_duration_seconds_count", stage="revocation") == 1
    assert 0 < total(samples, "tokengate_stage_duration_seconds_sum", stage="token") < 1


async def test_mirror_size_follows_a_revocation(gw, http, mint):
    await until(gw, lambda s: total(s, "tokengate_revocation_mirror_entries") == 0)
    async with http.post(f"{gw.admin_url}/admin/revoke", json={"sub": "mallory"}) as resp:
        assert resp.status == 200, await resp.text()
    await until(gw, lambda s: total(s, "tokengate_revocation_mirror_entries") == 1)


async def test_login_refresh_and_logout_are_counted_by_outcome(gw, http):
    async with http.post(f"{gw.url}/auth/signup", json={"username": "dora", "password": PASSWORD}) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(f"{gw.url}/auth/login", json={"username": "dora", "password": "wrong" * 4}) as resp:
        assert resp.status == 401
    async with http.post(f"{gw.url}/auth/login", json={"username": "dora", "password": PASSWORD}) as resp:
        assert resp.status == 200
        tokens = await resp.json()
    async with http.post(f"{gw.url}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}) as resp:
        assert resp.status == 200
        tokens = await resp.json()
    async with http.post(f"{gw.url}/auth/logout", headers=bearer(tokens["access_token"])) as resp:
        assert resp.status == 204

    name = "tokengate_auth_requests_total"
    samples = await until(gw, lambda s: total(s, name) >= 4)
    assert total(samples, name, action="login", outcome="success") == 1
    assert total(samples, name, action="login", outcome="invalid_credentials") == 1
    assert total(samples, name, action="refresh", outcome="success") == 1
    assert total(samples, name, action="logout", outcome="success") == 1


async def test_two_workers_add_up(start_gateway, recorder, keys_dir):  # noqa: F811
    gw = await start_gateway(config(keys_dir, recorder.url), "--workers", "2")
    n = 40
    for _ in range(n):
        async with aiohttp.ClientSession() as fresh:     # a new connection each time: the kernel spreads them
            async with fresh.get(f"{gw.url}/api/public/x") as resp:
                assert resp.status == 200
    assert len(recorder.received) == n
    # Fresh connections spread over both workers (all 40 on one: odds of 2**-39), so a scrape, answered
    # by either worker, sees n only when it adds up both workers' counts.
    name = "tokengate_requests_total"
    # Live gauges add up over both workers' files; each worker's mirror is in sync. A gauge is written
    # when its worker folds (once a second), so a worker that served little may not have written it yet.
    samples = await until(gw, lambda s: total(s, name, outcome="forwarded") == n
                          and total(s, "tokengate_revocation_mirror_in_sync") == 1)
    assert total(samples, "tokengate_upstream_duration_seconds_count", upstream="accounts") == n
    assert gw.stop() == 0


async def test_metrics_need_the_admin_token_when_one_is_set(start_gateway, recorder, keys_dir):  # noqa: F811
    cfg = config(keys_dir, recorder.url)
    cfg["admin"] = {"token": ADMIN_TOKEN}
    gw = await start_gateway(cfg)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{gw.admin_url}/metrics", headers=bearer("x" * 40)) as resp:
            assert resp.status == 401
        async with http.get(f"{gw.admin_url}/healthz") as resp:
            assert resp.status == 200
    await until(gw, lambda s: ("tokengate_revocation_mirror_in_sync", frozenset()) in s, ADMIN_TOKEN)


async def test_metrics_off_means_no_metrics_endpoint(start_gateway, recorder, keys_dir, http):  # noqa: F811
    cfg = config(keys_dir, recorder.url)
    cfg["admin"] = {"metrics": False}
    gw = await start_gateway(cfg)
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        assert resp.status == 404
    async with http.get(f"{gw.url}/api/public/x") as resp:
        assert resp.status == 200


async def _worker_pids(gw: GatewayProcess, count: int, limit_s: float = 15) -> set[int]:
    pids: set[int] = set()
    deadline = time.monotonic() + limit_s
    while len(pids) < count and time.monotonic() < deadline:
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(f"{gw.admin_url}/healthz") as resp:
                pids.add((await resp.json())["pid"])
    return pids


async def test_a_restarted_workers_counts_stay_and_its_live_gauges_go(start_gateway, recorder, keys_dir):  # noqa: F811
    gw = await start_gateway(config(keys_dir, recorder.url), "--workers", "2")
    n = 20
    for _ in range(n):
        async with aiohttp.ClientSession() as fresh:
            async with fresh.get(f"{gw.url}/api/public/x") as resp:
                assert resp.status == 200
    name = "tokengate_requests_total"
    await until(gw, lambda s: total(s, name, outcome="forwarded") == n)   # both workers have folded
    first = await _worker_pids(gw, 2)
    assert len(first) == 2
    dead, alive = sorted(first)
    environ = Path(f"/proc/{alive}/environ").read_bytes().split(b"\0")
    metrics_dir = Path(next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
    assert any(metrics_dir.glob(f"gauge_live*_{dead}.db"))
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (await _worker_pids(gw, 2, 2)) - first and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(metrics_dir.glob(f"gauge_live*_{dead}.db"))   # marked dead by the supervisor
    # The new worker's mirror is in sync once it has folded; the dead one's counters still count.
    samples = await until(gw, lambda s: total(s, "tokengate_revocation_mirror_in_sync") == 1)
    assert total(samples, name, outcome="forwarded") == n
    assert gw.stop() == 0
    assert not metrics_dir.exists()                              # removed with the supervisor
