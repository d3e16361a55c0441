"""`python -m loadtests.bench_reload --redis URL [--count N] [--sid-share F] [--trace] [--json out.json]`: a
revocation mirror's full reload from a real Redis store at scale.

Writes N live revocations into the store's index (token ids, and ended sessions' ids for a share F of
them), then reloads a fresh Denylist from that store the way a gateway does at start and after a lost
connection (``Store.live_revocation_pages``), and reports how long it took, the longest event-loop stall
meanwhile, Redis's own time a call (what its other clients wait), the longest wait for a page, the
process's RSS growth and, with ``--trace``, the peak of what Python allocated (tracemalloc: several
times slower). The URL must be a loopback Redis whose revocation index is empty; what the run wrote is
deleted at the end. Exit 0 when every id was loaded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.config.load import StoreConfig
from gateway.forward.headers import is_loopback
from gateway.steps.denylist import Denylist
from gateway.store import open_store
from gateway.store.base import DENY_INDEX, DENY_VALUES, Store

from .bench_mirror import ISSUER, MB, rss_bytes

WRITE_BATCH = 10_000
LIFE_S = 900


async def fill(url: str, count: int, sid_share: float, now: float) -> None:
    """``count`` live entries in the index, as the store's revoke() leaves them (the per-id keys are not
    what a reload reads)."""
    from redis.asyncio import Redis

    async with Redis.from_url(url) as client:
        if await client.exists(DENY_INDEX, DENY_VALUES):
            raise SystemExit(f"{DENY_INDEX} already holds revocations: use an empty Redis (or another database)")
        every = round(1 / sid_share) if sid_share > 0 else 0
        for start in range(0, count, WRITE_BATCH):
            index, values = {}, {}
            for i in range(start, min(count, start + WRITE_BATCH)):
                kind = "sid" if every and i % every == 0 else "jti"
                member = json.dumps([kind, ISSUER, f"{i:032x}"], separators=(",", ":"))
                index[member], values[member] = now + LIFE_S, repr(now + LIFE_S)
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(DENY_INDEX, index)
                pipe.hset(DENY_VALUES, mapping=values)
                await pipe.execute()


async def clean(url: str) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(url) as client:
        await client.unlink(DENY_INDEX, DENY_VALUES)


async def script_stats(url: str) -> tuple[int, int]:
    """Redis's own count of script calls (EVALSHA) and the microseconds it spent in them, so far."""
    from redis.asyncio import Redis

    async with Redis.from_url(url) as client:
        stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


class Timed:
    """The store's page reads, each timed: how long the mirror waited for a page (Redis's time, the
    decoding, less what overlapped with taking in the one before)."""

    def __init__(self, store: Store) -> None:
        self.store, self.longest_s, self.pages = store, 0.0, 0

    async def pages_of(self, now: float) -> Any:
        pages = self.store.live_revocation_pages(now)
        while True:
            started = time.perf_counter()
            try:
                page = await anext(pages)
            except StopAsyncIteration:
                return
            self.longest_s = max(self.longest_s, time.perf_counter() - started)
            self.pages += 1
            yield page


async def longest_stall(stop: asyncio.Event) -> float:
    longest, last = 0.0, time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest


async def bench(url: str, count: int, sid_share: float, trace: bool) -> dict[str, Any]:
    now = time.time()
    print(f"writing {count:,} revocations", file=sys.stderr, flush=True)
    await fill(url, count, sid_share, now)
    try:
        store = await open_store(StoreConfig(url=url))
        try:
            await store.ping()
            mirror, timed = Denylist(store), Timed(store)
            gc.collect()
            rss_before = rss_bytes()
            if trace:
                tracemalloc.start()
            print("reloading a mirror from the store", file=sys.stderr, flush=True)
            calls_before, usec_before = await script_stats(url)
            stop = asyncio.Event()
            stalls = asyncio.create_task(longest_stall(stop))
            started = time.perf_counter()
            await mirror._replace(timed.pages_of(time.time()), time.time())
            took_s = time.perf_counter() - started
            stop.set()
            stall_s = await stalls
            calls_after, usec_after = await script_stats(url)
            redis_ms = (usec_after - usec_before) / max(calls_after - calls_before, 1) / 1e3
            peak = tracemalloc.get_traced_memory()[1] if trace else None
            tracemalloc.stop()
            gc.collect()
            return {"count": count, "sid_share": sid_share, "loaded": len(mirror), "reload_s": took_s,
                    "pages": timed.pages, "longest_page_wait_ms": timed.longest_s * 1e3,
                    "redis_ms_per_call": redis_ms,
                    "longest_loop_stall_ms": stall_s * 1e3, "rss_growth_mb": (rss_bytes() - rss_before) / MB,
                    "traced_peak_mb": None if peak is None else peak / MB}
        finally:
            await store.close()
    finally:
        await clean(url)


def text(r: dict[str, Any]) -> str:
    traced = "" if r["traced_peak_mb"] is None else f"; Python's allocations peaked at {r['traced_peak_mb']:.1f} MB"
    return "\n".join([
        f"mirror reload from Redis, {r['count']:,} revoked ids ({r['sid_share']:.0%} of them sessions' sids)",
        f"  loaded               {r['loaded']:,} ids in {r['reload_s']:.2f} s, {r['pages']} pages",
        f"  Redis's own time     {r['redis_ms_per_call']:.1f} ms a call, on average (what other clients of it wait)",
        f"  longest page wait    {r['longest_page_wait_ms']:.1f} ms",
        f"  longest loop stall   {r['longest_loop_stall_ms']:.1f} ms",
        f"  RSS growth           {r['rss_growth_mb']:.1f} MB{traced}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_reload", description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, metavar="URL", help="a loopback Redis, e.g. redis://127.0.0.1:6379/9")
    parser.add_argument("--count", type=int, default=1_000_000, help="revoked ids (default 1,000,000)")
    parser.add_argument("--sid-share", type=float, default=0.5, help="share of them that are sessions' ids (0 to 1)")
    parser.add_argument("--trace", action="store_true", help="also the peak of Python's allocations (slow)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.count < 1 or not 0 <= args.sid_share <= 1:
        parser.error("--count must be at least 1, --sid-share from 0 to 1")
    parts = urlsplit(args.redis)
    if parts.scheme not in ("redis", "rediss") or not is_loopback(parts.hostname or ""):
        parser.error("--redis must be a redis:// URL on a loopback address (the kit's load stays on this machine)")
    result = asyncio.run(bench(args.redis, args.count, args.sid_share, args.trace))
    print(text(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["loaded"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
