"""The kit's tests' real gateway: `tokengate serve` on the test config (tests/conftest.base_config),
its upstreams pointed at an echo app on the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.dev.echo import build_echo_app
from tests.conftest import base_config
from tests.integration.gatewayproc import GatewayProcess, spawn_gateway, wait_until_ready


@pytest.fixture
async def gateway(aiohttp_server: Any, keys_dir: Path, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    echo = await aiohttp_server(build_echo_app())
    config = base_config(keys_dir)
    upstream = f"http://127.0.0.1:{echo.port}"
    config["upstreams"] = {"accounts": {"url": upstream}, "orders": {"url": upstream}}
    gw = spawn_gateway(config, tmp_path)
    try:
        await wait_until_ready(gw)
        yield gw
    finally:
        gw.stop()


def config_path(gw: GatewayProcess, tmp_path: Path) -> str:
    """The config file the gateway serves (spawn_gateway writes it beside the test's files)."""
    return str(tmp_path / f"gateway-{gw.port}.yaml")
