"""The demo as a newcomer meets it: ``python -m gateway.dev.demo`` as a real process on free ports, its banner
read, and every line of it run in order (curl lines as aiohttp requests, the others in bash), each one
answering the status its comment promises. Its log is JSON and never holds a password, token or secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dev.demo import END
from loadtests.procs import free_port
from tests.integration.shell_lines import Shell, curl_session, run_line, split_comment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
BANNER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MAIL_TIMEOUT_S = 10.0
POLL_S = 0.05
GATEWAY_URL = re.compile(r"gateway on (http://[\w.:]+)")
ACCOUNT = re.compile(r"^  (?P<username>\S+)\s+password (?P<password>\S+)\s+role (?P<role>\S+)$")


@dataclass
class Demo:
    banner: str
    log_path: Path
    proc: asyncio.subprocess.Process


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """The demo process on free ports, its banner read; stopped by PID (SIGTERM) at the end."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TOKENGATE_SECRET", "TOKENGATE_CONFIG", "TOKENGATE_LOG_FORMAT")}
    env.update(TOKENGATE_PORT=str(free_port()), TOKENGATE_ADMIN_PORT=str(free_port()),
               DEMO_UPSTREAM_PORT=str(free_port()))
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.dev.demo", cwd=ROOT, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        try:
            raw = await asyncio.wait_for(proc.stdout.readuntil(END.encode()), BANNER_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            raise AssertionError(f"no banner from the demo:\n{log_path.read_text()}") from exc
        yield Demo(raw.decode(), log_path, proc)
    finally:
        await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)


def command_lines(banner: str) -> list[str]:
    """The lines to paste: indented, from "paste these" on."""
    start = banner.index("paste these")
    return [line[2:] for line in banner[start:].splitlines() if line.startswith("  ")]


def log_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_for_record(path: Path, logger: str) -> None:
    """Poll the log until a record of ``logger`` is in it (the mailer writes from the background)."""
    deadline = time.monotonic() + MAIL_TIMEOUT_S
    while not any(r["logger"] == logger for r in log_records(path)):
        assert time.monotonic() < deadline, f"no {logger} record within {MAIL_TIMEOUT_S}s"
        await asyncio.sleep(POLL_S)


async def test_every_line_of_the_banner_answers_as_its_comment_says(demo: Demo) -> None:
    assert demo.banner.endswith("\n")
    accounts = {m["username"]: m for line in demo.banner.splitlines() if (m := ACCOUNT.match(line))}
    assert {name: m["role"] for name, m in accounts.items()} == {"alice": "user", "admin": "admin"}
    shell = Shell(cwd=ROOT)   # where the banner says to paste them
    lines = command_lines(demo.banner)
    async with curl_session() as http:
        for line in lines:
            await run_line(http, line, shell)
        base = GATEWAY_URL.search(demo.banner)[1]
        forgot = await http.post(f"{base}/auth/forgot-password", json={"email": "alice@example.test"})
        assert forgot.status == 202
    await wait_for_record(demo.log_path, "tokengate.mail")   # mail.backend: log, in the log as config/demo.yaml says
    statuses = [split_comment(line)[1] for line in lines if "curl " in line]
    assert {200, 204, 401, 403, 404} <= set(statuses)   # beyond a 403: an admin's 200, a logout's 204
    assert {"TOKENGATE_SECRET", "TOKEN", "ADMIN", "REFRESH", "MINTED"} <= set(shell.variables)

    await _stop(demo.proc)
    assert demo.proc.returncode == 0
    records = log_records(demo.log_path)   # JSON lines, as `tokengate serve` writes them
    assert any(r["level"] == "warning" for r in records)   # memory://: warned, as JSON
    assert any(r["logger"] == "tokengate.access" for r in records)
    text = demo.log_path.read_text()
    secrets = [m["password"] for m in accounts.values()] + [v for v in shell.values if not v.startswith("{")]
    leaked = [value[:6] + "..." for value in secrets if value in text]
    assert not leaked, f"the demo's log holds secrets: {leaked}"
