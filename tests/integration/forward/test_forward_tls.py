"""HTTPS upstreams, on both upstream clients: verified against the trusted CAs (here a test CA named
by SSL_CERT_FILE, as an operator would), refused with 502 when the certificate cannot be verified."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.dev.echo import build_echo_app
from tests.tlsfiles import server_context, write_tls_files

from ..conftest import MakeProxy

pytestmark = pytest.mark.integration
BOUND_S = 5.0


@pytest.fixture
async def tls_upstream(aiohttp_server: Any, tmp_path: Path) -> tuple[TestServer, Path]:
    ca, cert, key = write_tls_files(tmp_path)
    return await aiohttp_server(build_echo_app(), ssl=server_context(cert, key)), ca


async def test_an_https_upstream_is_verified_and_reached(make_proxy: MakeProxy, tls_upstream: tuple[TestServer, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca = tls_upstream
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))   # read when the Forwarder makes its TLS context
    proxy = await make_proxy(f"https://127.0.0.1:{server.port}")
    async with asyncio.timeout(BOUND_S):
        for _ in range(3):   # and again, on a kept connection
            resp = await proxy.post("/x?q=1", data=b"over tls")
            seen = await resp.json()
            assert resp.status == 200 and (seen["path"], seen["body"]) == ("/x", "over tls")
        stream = await proxy.get("/_echo/chunked?n=3")
        assert await stream.read() == b"chunk 0\nchunk 1\nchunk 2\n"
    assert len(server.runner.server.connections) == 1   # one kept-alive connection carried them all


async def test_an_https_upstream_that_cannot_be_verified_gets_502(make_proxy: MakeProxy,
                                                                  tls_upstream: tuple[TestServer, Path]) -> None:
    server, _ = tls_upstream   # its CA is not trusted
    proxy = await make_proxy(f"https://127.0.0.1:{server.port}")
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
