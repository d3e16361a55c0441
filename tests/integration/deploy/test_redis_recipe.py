"""README.md's "Run it with Redis" recipe, run as written: the session's real redis-server stands in for the
one the recipe starts, free ports for 8080 and 9090; every other line runs as a reader would paste it (the
real ``tokengate`` command line, ``serve`` in the background and stopped by PID, the curl lines checked
against the statuses their comments promise).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from loadtests.procs import free_ports, stop_process
from tests.conftest import flush
from tests.integration.shell_lines import Shell, commands, curl_session, run_line

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
RECIPE_REDIS = "redis://127.0.0.1:6380/0"


def recipe() -> str:
    """The sh block of README.md's "Run it with Redis" section."""
    section = (ROOT / "README.md").read_text().split("\n## Run it with Redis\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, 'no sh block under "Run it with Redis"'
    return block[1]


def on_our_servers(block: str, redis_url: str) -> tuple[str, int]:
    """The recipe with our Redis and free ports in place of its own; and the proxy port."""
    port, admin_port = free_ports(2)
    assert RECIPE_REDIS in block
    return (block.replace(RECIPE_REDIS, redis_url).replace("8080", str(port))
            .replace("9090", str(admin_port))), port


async def test_the_redis_recipe_logs_in_an_account_added_with_the_command_line(redis_url: str,
                                                                                tmp_path: Path) -> None:
    await flush(redis_url)   # `users add alice` needs a store without alice
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")   # the recipe's .venv/bin/tokengate, from the repository root
    block, port = on_our_servers(recipe(), redis_url)
    lines = commands(block)
    assert lines[0].startswith("redis-server --port 6380 ")   # replaced by the session's redis-server
    shell = Shell(cwd=tmp_path)
    try:
        async with curl_session() as http:
            for line in lines[1:]:
                await run_line(http, line, shell)
    finally:
        statuses = [await asyncio.to_thread(stop_process, proc) for proc in shell.background]
    assert len(statuses) == 1 and statuses[0] == 0   # serve ran, and drained on SIGTERM
    assert f"127.0.0.1:{port}/auth/login" in lines[-1]
    log = (tmp_path / "background-0.log").read_text()
    assert shell.variables["PASSWORD"] not in log and shell.variables["TOKENGATE_SECRET"] not in log
