"""README.md's "TLS in front" nginx block, run: a real nginx terminating TLS (a test certificate) on a free
loopback port, in front of a real ``tokengate serve`` that trusts it (``listen.trusted_proxies``), and the
echo upstream behind. What the upstream receives is asserted: the scheme nginx saw, and no address, URL
or method a client tried to state.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.dev.echo import ECHO, EchoState
from loadtests.procs import free_port, stop_process
from tests.conftest import base_config, bearer
from tests.integration.deploy.test_nginx import STOP_TIMEOUT_S, Nginx, spawn_nginx, wait_for_port
from tests.tlsfiles import write_tls_files

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
# What a client sends to be believed: none of it may reach the upstream through nginx and the gateway.
HOSTILE = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http", "Forwarded": "for=203.0.113.9",
           "X-Real-IP": "203.0.113.9", "X-Original-URL": "/api/admin", "X-Rewrite-URL": "/api/admin",
           "X-Forwarded-Prefix": "/evil"}


def readme_block() -> str:
    """The nginx block of README.md's "TLS in front" section."""
    section = (ROOT / "README.md").read_text().split("\n## TLS in front\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert block, 'no nginx block under "TLS in front"'
    return block[1]


def on_test_files(block: str, port: int, gateway: str, cert: Path, key: Path) -> str:
    """The block with a free port, the test certificate and the gateway's address in place of its own."""
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"), ("127.0.0.1:8080", gateway),
                     ("/etc/nginx/tls/api.example.com.pem", str(cert)),
                     ("/etc/nginx/tls/api.example.com.key", str(key))):
        assert old in block, old
        block = block.replace(old, new)
    return block


@pytest.fixture
async def tls_front(start_gateway: Callable[..., Any], echo_upstream: TestServer, keys_dir: Path,
                    tmp_path: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, EchoState]]:
    """(https URL of nginx, a client context trusting its certificate, what the upstream received)."""
    upstream = f"http://127.0.0.1:{echo_upstream.port}"
    cfg = base_config(keys_dir)
    cfg["upstreams"] = {"accounts": {"url": upstream}, "orders": {"url": upstream}}
    cfg["listen"] = {**cfg["listen"], "trusted_proxies": ["127.0.0.1/32"]}   # as the README says
    gw = await start_gateway(cfg)
    ca, cert, key = write_tls_files(tmp_path)
    prefix, port = tmp_path / "nginx", free_port()
    prefix.mkdir()
    nginx: Nginx = spawn_nginx(prefix, port, on_test_files(readme_block(), port, f"127.0.0.1:{gw.port}", cert, key))
    try:
        await wait_for_port(nginx)
        yield f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(ca)), echo_upstream.app[ECHO]
    finally:
        await asyncio.to_thread(stop_process, nginx.proc, STOP_TIMEOUT_S)


def received(upstream: EchoState, name: str) -> list[str]:
    (seen,) = upstream.received
    return [value for key, value in seen["headers"] if key.lower() == name.lower()]


async def test_upstreams_see_https_and_no_client_stated_address_url_or_method(
        tls_front: tuple[str, ssl.SSLContext, EchoState], mint: Callable[..., str]) -> None:
    url, context, upstream = tls_front
    headers = {**bearer(mint(sub="alice", roles=["user"])), **HOSTILE}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/orders/7", headers=headers, ssl=context) as resp:
            assert resp.status == 200
    assert received(upstream, "X-Forwarded-Proto") == ["https"]   # nginx's word, believed: it is trusted
    assert received(upstream, "X-User-Id") == ["alice"]
    (seen,) = upstream.received
    assert seen["path"] == "/api/orders/7"
    forwarded = " ".join(value for _, value in seen["headers"])
    assert "203.0.113.9" not in forwarded and "/api/admin" not in forwarded and "/evil" not in forwarded
    for name in ("Forwarded", "X-Real-IP", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Prefix"):
        assert received(upstream, name) == [], name
