"""SIGHUP reloads the config in the real `tokengate serve` process (one worker and two): routes and
keys change while a load runs and no request fails; a config that does not validate is refused
and the old one keeps serving; sections bound to sockets wait for a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from tests.conftest import AUDIENCE, ISSUER, bearer
from tests.integration.gatewayproc import GatewayProcess
from tests.integration.server.test_gateway_process import _until_logged, gateway_config

pytestmark = pytest.mark.integration
NEW_SECRET = "reload-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
LOAD_LIMIT_S = 30.0


def config_path(gw: GatewayProcess) -> Path:
    return Path(gw.proc.args[gw.proc.args.index("--config") + 1])


def rewrite(gw: GatewayProcess, change: Any) -> None:
    path = config_path(gw)
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def mint_with(secret: str, kid: str, roles: list[str]) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "rita", "iat": now, "exp": now + 300, "jti": f"r{now}{kid}",
              "roles": roles}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})


async def status(gw: GatewayProcess, path: str, token: str) -> int:
    async with aiohttp.ClientSession() as fresh:   # a new connection: with two workers, either may answer
        async with fresh.get(f"{gw.url}{path}", headers=bearer(token)) as resp:
            return resp.status


async def until_every_worker(gw: GatewayProcess, path: str, token: str, expected: int, workers: int) -> None:
    """Poll until ``expected`` comes back 4 x workers times in a row, over fresh connections."""
    deadline, streak = time.monotonic() + 10, 0
    while streak < 4 * workers:
        assert time.monotonic() < deadline, f"GET {path} never settled on {expected}:\n{gw.log()}"
        streak = streak + 1 if await status(gw, path, token) == expected else 0


async def steady_load(gw: GatewayProcess, token: str, stop: asyncio.Event) -> Counter[int | str]:
    """Requests on 8 keep-alive connections until ``stop`` (at most LOAD_LIMIT_S): their statuses."""
    seen: Counter[int | str] = Counter()
    deadline = time.monotonic() + LOAD_LIMIT_S

    async def one_client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                async with session.get(f"{gw.url}/api/orders", headers=bearer(token)) as resp:
                    await resp.read()
                    seen[resp.status] += 1
            except aiohttp.ClientError as exc:
                seen[type(exc).__name__] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(one_client(session) for _ in range(8)))
    return seen


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_under_load_changes_routes_and_keys_and_fails_no_request(
        start_gateway, echo_upstream, keys_dir, mint, workers):
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    gw = await start_gateway(cfg, "--workers", str(workers))
    await _until_logged(gw, "tokengate serving on", workers)
    token = mint(roles=["user"])
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(gw, token, stop))
    newcomer = mint_with(NEW_SECRET, "main2", ["user"])
    try:
        assert await status(gw, "/api/new", token) == 404 and await status(gw, "/api/orders", newcomer) == 401

        def add_route_and_key(data: dict[str, Any]) -> None:
            data["routes"].append({"path": "/api/new", "upstream": "accounts", "roles": ["user"]})
            data["tokens"]["keys"].append({"kid": "main2", "alg": "HS256", "secret": NEW_SECRET})

        rewrite(gw, add_route_and_key)
        gw.proc.send_signal(signal.SIGHUP)
        await until_every_worker(gw, "/api/new", token, 200, workers)
        await until_every_worker(gw, "/api/orders", newcomer, 200, workers)   # the new key verifies
        config_path(gw).write_text("routes: [this is: not a config\n")       # broken: refused, logged
        gw.proc.send_signal(signal.SIGHUP)
        await _until_logged(gw, "the config was not reloaded, the old one keeps serving", workers)
        assert await status(gw, "/api/new", token) == 200
    finally:
        stop.set()
        seen = await load
    assert set(seen) == {200} and seen[200] > 50, seen   # not one request failed while reloading
    assert gw.proc.poll() is None


async def test_a_removed_key_and_sections_bound_to_sockets(start_gateway, echo_upstream, keys_dir, mint):
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")))
    old = mint(roles=["user"])   # signed by kid main
    assert await status(gw, "/api/orders", old) == 200   # and now in the verified-token cache

    def drop_main_key_and_move_the_admin_port(data: dict[str, Any]) -> None:
        data["tokens"]["keys"] = [k for k in data["tokens"]["keys"] if k["kid"] != "main"]
        data["tokens"]["signing_key"] = "rsa1"
        data["admin"]["port"] += 1

    rewrite(gw, drop_main_key_and_move_the_admin_port)
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, "config reload: reloaded from")
    assert await status(gw, "/api/orders", old) == 401   # the cache does not outlive its key
    assert "admin changed" in gw.log()
    async with aiohttp.ClientSession() as http:          # the admin port stayed where it was
        async with http.get(f"{gw.admin_url}/readyz") as resp:
            assert resp.status == 200


async def test_reload_watch_picks_up_a_changed_file_without_a_signal(start_gateway, echo_upstream, keys_dir, mint):
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["reload"] = {"watch": True, "interval": "200ms"}
    gw = await start_gateway(cfg)
    token = mint(roles=["user"])
    assert await status(gw, "/api/new", token) == 404
    rewrite(gw, lambda data: data["routes"].append({"path": "/api/new", "upstream": "accounts"}))
    await until_every_worker(gw, "/api/new", token, 200, 1)
    assert "changed: reloading" in gw.log() and "config reload: reloaded from" in gw.log()


# --- with a supervisor: read once, applied one worker after another -----------------------------------

RELOADED = "config reload: reloaded from"


def records(gw: GatewayProcess, text: str) -> list[dict[str, Any]]:
    """The JSON log records whose message starts with ``text``, in the order they were written."""
    lines = (json.loads(line) for line in gw.log().splitlines() if line.startswith("{"))
    return [record for record in lines if record["message"].startswith(text)]


def worker_pids(gw: GatewayProcess) -> list[int]:
    """The pids of the workers that started serving, in order."""
    return [int(r["message"].rsplit("(pid ", 1)[1].rstrip(")")) for r in records(gw, "tokengate serving on")]


async def test_two_workers_get_one_reading_of_the_file_one_after_the_other(start_gateway, echo_upstream, keys_dir):
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")), "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)
    workers = worker_pids(gw)
    orders = set()
    for n in range(1, 4):
        rewrite(gw, lambda data, n=n: data["routes"].append({"path": f"/api/new{n}", "upstream": "accounts"}))
        gw.proc.send_signal(signal.SIGHUP)
        await _until_logged(gw, RELOADED, 2 * n)
        done = records(gw, RELOADED)[-2:]
        # Both workers applied the same reading, made once by a reader that is neither of them nor the supervisor.
        assert sorted(r["worker_pid"] for r in done) == sorted(workers)
        orders.add(tuple(r["worker_pid"] for r in done))
        assert {r["config_sha256"] for r in done} == {hashlib.sha256(config_path(gw).read_bytes()).hexdigest()}
        (reader,) = {r["read_by_pid"] for r in done}
        assert reader not in {*workers, gw.proc.pid}
        assert all(r["read_ms"] > 0 and r["apply_ms"] > 0 for r in done)
    assert len(orders) == 1   # in turn, always the same: the second is asked once the first has applied
    assert worker_pids(gw) == workers   # nobody restarted


async def test_a_replacement_worker_starts_with_the_config_the_others_reloaded(start_gateway, echo_upstream,
                                                                                 keys_dir, mint):
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")), "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)
    token = mint(roles=["user"])
    rewrite(gw, lambda data: data["routes"].append({"path": "/api/new", "upstream": "accounts"}))
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, RELOADED, 2)
    config_path(gw).write_text("routes: [not read by the replacement\n")   # it must not read the file at all
    os.kill(worker_pids(gw)[0], signal.SIGKILL)
    await _until_logged(gw, "tokengate serving on", 3)
    await until_every_worker(gw, "/api/new", token, 200, 2)
    assert "invalid YAML" not in gw.log()


async def test_a_sighup_to_one_worker_reloads_every_worker(start_gateway, echo_upstream, keys_dir, mint):
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")), "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)
    rewrite(gw, lambda data: data["routes"].append({"path": "/api/new", "upstream": "accounts"}))
    os.kill(worker_pids(gw)[1], signal.SIGHUP)
    await _until_logged(gw, RELOADED, 2)
    await until_every_worker(gw, "/api/new", mint(roles=["user"]), 200, 2)
    assert {r["worker_pid"] for r in records(gw, RELOADED)} == set(worker_pids(gw))


async def test_hangups_that_come_together_end_in_the_last_config_on_every_worker(start_gateway, echo_upstream,
                                                                                   keys_dir, mint):
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")), "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)
    for n in range(5):
        rewrite(gw, lambda data, n=n: data["routes"].append({"path": f"/api/new{n}", "upstream": "accounts"}))
        gw.proc.send_signal(signal.SIGHUP)
    await until_every_worker(gw, "/api/new4", mint(roles=["user"]), 200, 2)
    assert gw.proc.poll() is None and len(worker_pids(gw)) == 2


async def test_with_two_workers_the_supervisor_watches_the_file(start_gateway, echo_upstream, keys_dir, mint):
    cfg = gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/"))
    cfg["reload"] = {"watch": True, "interval": "200ms"}
    gw = await start_gateway(cfg, "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)
    rewrite(gw, lambda data: data["routes"].append({"path": "/api/new", "upstream": "accounts"}))
    await until_every_worker(gw, "/api/new", mint(roles=["user"]), 200, 2)
    await _until_logged(gw, RELOADED, 2)
    assert gw.log().count("changed: reloading") == 1   # seen once, by the supervisor, for both workers


async def test_a_reload_of_a_thousand_routes_reaches_every_worker(start_gateway, echo_upstream, keys_dir, mint):
    """The validated config of 1,000 routes is ~90 KB pickled: it reaches a worker in several pieces."""
    gw = await start_gateway(gateway_config(keys_dir, str(echo_upstream.make_url("")).rstrip("/")), "--workers", "2")
    await _until_logged(gw, "tokengate serving on", 2)

    def add_a_thousand_routes(data: dict[str, Any]) -> None:
        data["routes"] += [{"path": f"/svc{n}/items/*", "upstream": "accounts", "roles": [f"team{n}"]}
                           for n in range(1000)]

    rewrite(gw, add_a_thousand_routes)
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, RELOADED, 2)
    assert {r["worker_pid"] for r in records(gw, RELOADED)} == set(worker_pids(gw))
    await until_every_worker(gw, "/svc999/items/x", mint(roles=["team999"]), 200, 2)
