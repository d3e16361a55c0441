"""Start the real ``tokengate`` process on free loopback ports and stop it by PID."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from loadtests.procs import free_port, free_ports, stop_process  # noqa: F401 (free_port: for tests)

STARTUP_TIMEOUT_S = 20.0


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        return stop_process(self.proc, timeout_s)


async def wait_until_ready(gw: GatewayProcess, timeout_s: float = STARTUP_TIMEOUT_S, probe: str = "/readyz") -> None:
    """Poll the admin port until ``probe`` answers 200 (/healthz: up, even if not ready)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if gw.proc.poll() is not None:
                raise AssertionError(f"tokengate exited with {gw.proc.returncode}:\n{gw.log()}")
            try:
                async with session.get(f"{gw.admin_url}{probe}", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"tokengate was not ready within {timeout_s}s:\n{gw.log()}")


def spawn_gateway(config: dict[str, Any], workdir: Path, *args: str,
                  env: dict[str, str] | None = None, port: int | None = None) -> GatewayProcess:
    """Write ``config`` (ports filled in) and start ``python -m gateway serve`` on it."""
    port, admin_port = (port, *free_ports(1, {port})) if port else free_ports(2)
    config = {**config, "listen": {**config.get("listen", {}), "host": "127.0.0.1", "port": port},
              "admin": {**config.get("admin", {}), "host": "127.0.0.1", "port": admin_port}}
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path), *args],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return GatewayProcess(proc, port, admin_port, log_path)
