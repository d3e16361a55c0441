"""Integration fixtures: the real echo upstream and a small gateway app around Forwarder, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from gateway.answers import error_middleware
from gateway.dev.echo import ECHO, EchoState, build_echo_app
from gateway.forward.forwarder import Forwarder
from tests.integration.gatewayproc import GatewayProcess, spawn_gateway, wait_until_ready
from tests.integration.rawupstream import StartUpstream, raw_upstreams

FORWARDER = web.AppKey("forwarder", Forwarder)
IDENTITY = web.AppKey("identity", dict)
DEFAULT_IDENTITY = {"X-User-Id": "alice"}

MakeProxy = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def echo_upstream(aiohttp_server: Any) -> TestServer:
    """The echo app of gateway.dev.echo, served on a free loopback port."""
    return await aiohttp_server(build_echo_app())


@pytest.fixture
def echo_state(echo_upstream: TestServer) -> EchoState:
    return echo_upstream.app[ECHO]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[StartUpstream]:
    """raw_upstream(script) -> a RawUpstream (rawupstream.py) on a free loopback port."""
    async with raw_upstreams() as start:
        yield start


@pytest.fixture
def dead_upstream_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{unused_port()}"


async def _catch_all(request: web.Request) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]   # tests send paths that are already normal
    return await request.app[FORWARDER].forward(request, path, "accounts", request.app[IDENTITY])


def build_proxy_app(forwarder: Forwarder, identity: Mapping[str, str]) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[FORWARDER] = forwarder
    app[IDENTITY] = dict(identity)

    async def close_forwarder(app: web.Application) -> None:
        await forwarder.close()   # sessions open on first use, as in the real app

    app.on_cleanup.append(close_forwarder)
    app.router.add_route("*", "/{tail:.*}", _catch_all)
    return app


@pytest.fixture(params=["lean", "aiohttp"])
def forward_path(request: pytest.FixtureRequest) -> str:
    """Which upstream client carries what the lean path may carry: every forwarding test runs on both."""
    return str(request.param)


@pytest.fixture
def make_proxy(make_config: Callable[..., Any], aiohttp_server: Any, aiohttp_client: Any,
               forward_path: str) -> MakeProxy:
    """make_proxy(url, identity_headers=..., upstream={...}, **config sections) -> a client of a proxy app.

    The app forwards every request to the upstream "accounts" at ``url`` with ``identity_headers``.
    """

    async def make(url: str, *, identity_headers: Mapping[str, str] = DEFAULT_IDENTITY,
                   upstream: Mapping[str, Any] | None = None, **sections: Any) -> TestClient:
        upstreams = {"accounts": {"url": url, **(upstream or {})}}
        cfg = await asyncio.to_thread(make_config, upstreams=upstreams, **sections)   # writes and reads a file
        # As the real proxy port serves (gateway/server/edge.py): no lingering over a body nobody reads.
        server = await aiohttp_server(build_proxy_app(Forwarder(cfg, lean=forward_path == "lean"), identity_headers),
                                      lingering_time=0, keepalive_timeout=cfg.listen.idle_timeout)
        return await aiohttp_client(server)

    return make


@pytest.fixture
async def proxy(make_proxy: MakeProxy, echo_upstream: TestServer) -> TestClient:
    """A client of the default proxy app (Forwarder to "accounts" = the echo upstream)."""
    return await make_proxy(str(echo_upstream.make_url("")))


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """start_gateway(config_dict, *cli_args) -> a ready `tokengate serve` process (stopped at the end)."""
    async with _gateways(tmp_path, "/readyz") as start:
        yield start


@pytest.fixture
async def spawn_gateway_unready(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Like start_gateway, but waits only until the process is up (/healthz), ready or not."""
    async with _gateways(tmp_path, "/healthz") as start:
        yield start


@contextlib.asynccontextmanager
async def _gateways(tmp_path: Path, probe: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[GatewayProcess] = []

    async def start(config: dict[str, Any], *args: str) -> GatewayProcess:
        gw = spawn_gateway(config, tmp_path, *args)
        started.append(gw)
        await wait_until_ready(gw, probe=probe)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            await asyncio.to_thread(gw.stop)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
