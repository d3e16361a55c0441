"""`python -m loadtests.bench_mirror [--count N] [--sid-share F] [--json out.json]`: the revocation mirror
at scale.

Fills a real Denylist with N revoked ids (token ids, and ended sessions' ids for a share F of them)
through its resync path (``_replace``, fed a list of Revocation objects decoded the way the Redis store decodes them) and a sample through single
``_apply`` calls, then reports the memory it holds, the load and purge times, the longest event
loop stall of a reload, µs per ``check()``, and correctness: every revoked id refused (false
acceptance, must be 0) and random ids that were never revoked let through (false rejection).
Exit 0 when nothing was falsely accepted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from gateway.errors import RevokedToken
from gateway.steps.denylist import Denylist
from gateway.steps.identity import Identity
from gateway.store import MemoryStore
from gateway.store.base import Revocation

ISSUER = "https://auth.example.test"
MIN_LIFE_S, LIFE_S = 600, 1500   # revocations expire spread from 10 to 25 minutes ahead (none during
PURGE_AT_S = 690                  # the run); a purge this far ahead forgets about a tenth of them
CHECK_REPEAT = 200_000  # check() calls timed per case (at most 10 per revoked id)
BASELINE_MAX = 100_000  # entries in the old dict-of-tuples mirror measured for comparison
MB = 1024 * 1024


def rss_bytes() -> int:
    """Resident set size from /proc (Linux); 0 where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def make_live(count: int, now: float, seed: int, sid_share: float = 0.0) -> list[Revocation]:
    """What ``store.live_revocations`` hands over: one Revocation per id, each with its own
    strings, decoded from JSON members as the Redis store decodes them; ``sid_share`` of them
    are ended sessions (kind ``sid``), the rest token ids."""
    rnd = __import__("random").Random(seed)
    live = []
    for i in range(count):
        kind = "sid" if rnd.random() < sid_share else "jti"
        member = json.dumps([kind, ISSUER, f"{rnd.getrandbits(128):032x}"])
        kind, iss, id_ = json.loads(member)
        expires_at = now + MIN_LIFE_S + (LIFE_S - MIN_LIFE_S) * (i / max(count - 1, 1))
        live.append(Revocation(kind, iss, id_, expires_at, expires_at))
    rnd.shuffle(live)
    return live


def identity_of(jti: str, sid: str | None = None) -> Identity:
    claims = {} if sid is None else {"sid": sid}
    return Identity(sub="bench", roles=frozenset(), jti=jti, iss=ISSUER, exp=0.0, iat=None, claims=claims)


def identity_for(r: Revocation) -> Identity:
    """A token that revocation names: its jti, or (an ended session) a fresh jti carrying its sid."""
    return identity_of(r.id) if r.kind == "jti" else identity_of(r.id + "-token", sid=r.id)


def held_nbytes(denylist: Denylist) -> int:
    return denylist._jti.nbytes + denylist._sid.nbytes


def refused(denylist: Denylist, identity: Identity) -> bool:
    try:
        denylist.check(identity)
    except RevokedToken:
        return True
    return False


def us_per_call(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


async def timed_reload(denylist: Denylist, live: list[Revocation], now: float) -> tuple[float, float]:
    """Seconds the reload took, and the longest stretch the event loop could not run meanwhile."""
    longest_s, done = 0.0, False

    async def ticker() -> None:
        nonlocal longest_s
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            tick = time.perf_counter()
            longest_s, last = max(longest_s, tick - last), tick

    watch = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    await denylist._replace(live, now)
    took_s = time.perf_counter() - start
    done = True
    await watch
    return took_s, longest_s


async def measure_memory(live: list[Revocation], now: float) -> dict[str, Any]:
    """tracemalloc (numpy reports its arrays to it): what the mirror holds once loaded, and the
    peak above the store's list while it loads. Run apart from the timings, which it would slow."""
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    denylist = Denylist(MemoryStore())
    tracemalloc.reset_peak()
    await denylist._replace(live, now)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"held_bytes": after - before, "peak_above_list_bytes": peak - before,
            "nbytes": held_nbytes(denylist)}


def measure_dict_baseline(live: Sequence[Revocation]) -> float:
    """Bytes per entry of the mirror as it was: a dict of (iss, jti) -> expires_at."""
    sample = live[:BASELINE_MAX]
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    # New strings, as the old mirror's tuples held the strings of the Revocations it was fed.
    old = {("".join(r.iss), "".join(r.id)): r.expires_at for r in sample}
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del old
    return (after - before) / max(len(sample), 1)


async def measure_applies(live: Sequence[Revocation], sample: int) -> dict[str, Any]:
    denylist = Denylist(MemoryStore())
    denylist.in_sync = True
    some = live[:sample]
    start = time.perf_counter()
    for revocation in some:
        denylist._apply(revocation)
    took_s = time.perf_counter() - start
    missed = sum(not refused(denylist, identity_for(r)) for r in some)
    return {"count": len(some), "us_per_apply": took_s / max(len(some), 1) * 1e6,
            "bytes_per_entry": held_nbytes(denylist) / max(len(some), 1), "false_acceptances": missed}


class Phases:
    """Progress on stderr: each phase and how long it took (the whole run is bounded by N)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {what}", file=sys.stderr, flush=True)


async def bench(count: int, probes: int, sample: int, seed: int, sid_share: float = 0.0) -> dict[str, Any]:
    phase, now = Phases(), time.time()
    phase(f"decoding {count:,} revocations as the store hands them over")
    rss_start = rss_bytes()
    live = make_live(count, now, seed, sid_share)
    gc.collect()
    rss_before = rss_bytes()

    phase("bulk load through Denylist._replace (timed, RSS)")
    denylist = Denylist(MemoryStore())
    load_s, stall_s = await timed_reload(denylist, live, now)
    gc.collect()
    rss_after = rss_bytes()
    denylist.in_sync = True

    phase("check() timings")
    revoked, clean = identity_for(live[0]), identity_of("f" * 32 + "-never-revoked", sid="f" * 22)
    repeat = min(CHECK_REPEAT, 10 * count)
    check_revoked_us = us_per_call(lambda: refused(denylist, revoked), repeat)
    check_clean_us = us_per_call(lambda: refused(denylist, clean), repeat)

    phase("every revoked id, then random ids never revoked")
    false_accepted = sum(not refused(denylist, identity_for(r)) for r in live)
    rnd = __import__("random").Random(seed + 1)
    false_rejected = sum(refused(denylist, identity_of(f"{rnd.getrandbits(128):032x}-probe",
                                                       sid=f"{rnd.getrandbits(128):032x}"))
                         for _ in range(probes))

    phase("purge, then every id not yet expired again")
    purge_now, held = now + PURGE_AT_S, len(denylist)
    start = time.perf_counter()
    denylist._purge(purge_now)
    purge_s = time.perf_counter() - start
    survivors = [r for r in live if r.expires_at > purge_now]
    false_accepted += sum(not refused(denylist, identity_for(r)) for r in survivors)
    purged, left = held - len(denylist), len(denylist)
    del denylist, survivors

    phase("memory with tracemalloc (a second load)")
    memory = await measure_memory(live, now)
    phase(f"the old dict mirror on {min(count, BASELINE_MAX):,} entries, {min(sample, count):,} single _apply calls")
    baseline = measure_dict_baseline(live)
    applies = await measure_applies(live, min(sample, count))
    phase("done")
    return {
        "count": count,
        "sid_share": sid_share,
        "mirror_held_mb": memory["held_bytes"] / MB,
        "mirror_bytes_per_entry": memory["held_bytes"] / count,
        "mirror_nbytes_mb": memory["nbytes"] / MB,
        "rss_growth_mb": (rss_after - rss_before) / MB,
        "load_peak_above_list_mb": memory["peak_above_list_bytes"] / MB,
        "store_list_rss_mb": (rss_before - rss_start) / MB,
        "dict_baseline_bytes_per_entry": baseline,
        "load_s": load_s,
        "load_longest_loop_stall_ms": stall_s * 1e3,
        "purge_s": purge_s,
        "purged": purged,
        "left_after_purge": left,
        "check_revoked_us": check_revoked_us,
        "check_not_revoked_us": check_clean_us,
        "false_acceptances": false_accepted,
        "false_rejections": false_rejected,
        "false_rejection_probes": probes,
        "applies": applies,
    }


def text(r: dict[str, Any]) -> str:
    a = r["applies"]
    return "\n".join([
        f"revocation mirror, {r['count']:,} revoked ids ({r['sid_share']:.0%} of them ended sessions' sids)",
        f"  held once loaded      {r['mirror_held_mb']:8.1f} MB  ({r['mirror_bytes_per_entry']:.1f} bytes/entry,"
        f" tracemalloc; nbytes says {r['mirror_nbytes_mb']:.1f} MB)",
        f"  RSS growth            {r['rss_growth_mb']:8.1f} MB  (resident set before/after the timed load; counts what"
        f" the allocator kept of the load's peak)",
        f"  old dict of tuples    {r['dict_baseline_bytes_per_entry']:8.1f} bytes/entry (tracemalloc, for comparison)",
        f"  load peak             {r['load_peak_above_list_mb']:8.1f} MB  above the store's list of Revocations"
        f" (tracemalloc), which itself took {r['store_list_rss_mb']:.1f} MB (RSS)",
        f"  bulk load (_replace)  {r['load_s']:8.3f} s   longest event-loop stall {r['load_longest_loop_stall_ms']:.1f} ms",
        f"  purge                 {r['purge_s'] * 1e3:8.2f} ms  ({r['purged']:,} expired, {r['left_after_purge']:,} left)",
        f"  check(), revoked      {r['check_revoked_us']:8.2f} µs",
        f"  check(), not revoked  {r['check_not_revoked_us']:8.2f} µs",
        f"  single _apply         {a['us_per_apply']:8.2f} µs each over {a['count']:,}"
        f" ({a['bytes_per_entry']:.1f} bytes/entry), {a['false_acceptances']} missed",
        f"  false acceptances     {r['false_acceptances']:8d}     (every revoked id checked, before and after the purge)",
        f"  false rejections      {r['false_rejections']:8d}     of {r['false_rejection_probes']:,} random ids never revoked",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_mirror", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="revoked ids in the mirror (default 1,000,000)")
    parser.add_argument("--probes", type=int, default=1_000_000, help="random never-revoked ids checked")
    parser.add_argument("--sample", type=int, default=100_000, help="ids added one by one through _apply")
    parser.add_argument("--sid-share", type=float, default=0.0,
                        help="share of the ids that are ended sessions (kind sid) rather than token ids (0 to 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.count < 1 or args.probes < 0 or args.sample < 0 or not 0 <= args.sid_share <= 1:
        parser.error("--count must be at least 1, --probes and --sample at least 0, --sid-share from 0 to 1")
    result = asyncio.run(bench(args.count, args.probes, args.sample, args.seed, args.sid_share))
    print(text(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["false_acceptances"] == 0 and result["applies"]["false_acceptances"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
