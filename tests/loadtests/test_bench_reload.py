"""The reload benchmark against a real Redis on a small count: it loads every id page by page, leaves
the store as it found it, and refuses what it must not touch (timings and memory are printed, never
asserted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.store.base import DENY_INDEX
from loadtests import bench_reload

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_url(redis_url: str) -> str:
    """A database of the tests' Redis that no other test writes to."""
    return redis_url.rsplit("/", 1)[0] + "/7"


def test_a_reload_loads_every_id_in_pages_and_cleans_up(bench_url: str, tmp_path: Path, monkeypatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.store.redis import store as redis_store

    monkeypatch.setattr(redis_store, "LIVE_ENTRIES", 500)   # several pages of a small count
    out = tmp_path / "reload.json"
    assert bench_reload.main(["--redis", bench_url, "--count", "6000", "--sid-share", "0.5", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["loaded"] == figures["count"] == 6000 and figures["pages"] >= 6
    for key in ("reload_s", "redis_ms_per_call", "longest_page_wait_ms", "longest_loop_stall_ms", "rss_growth_mb"):
        assert isinstance(figures[key], float)
    assert "Redis's own time" in capsys.readouterr().out

    async def left() -> int:
        async with Redis.from_url(bench_url) as client:
            return await client.exists(DENY_INDEX)
    assert asyncio.run(left()) == 0


@pytest.mark.parametrize("argv", [["--redis", "redis://10.0.0.9:6379/0"], ["--redis", "http://127.0.0.1:6379"],
                                  ["--redis", "redis://127.0.0.1:6379/0", "--count", "0"]])
def test_a_remote_redis_or_a_bad_count_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_reload.main(argv)
    assert exc.value.code == 2
