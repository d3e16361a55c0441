"""`run --start`: start the fast upstream, the plain proxy (with --compare) and one gateway per worker
count, revoke the pool's revoked tokens on each gateway, load every target in interleaved rounds with
the chosen driver, report, and stop everything by PID (also on Ctrl-C and errors).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from . import chart, compare, report
from .procs import StartFailed
from .revocation import admin_token, revoke, revoked_rows
from .stack import Pinning, Stack, Target
from .tokenpool import DEFAULT_MIX, PoolMaker, generate, read_pool, write_pool

SETTLE_TIMEOUT_S = 5.0
DEFAULT_POOL = 1000


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt   # unwinds through the Stack, which stops every child by PID


def make_pool(cfg: Any, workdir: Path) -> Path:
    """A pool of DEFAULT_POOL tokens for GET /api/orders with role user (when no --pool is given)."""
    entries = generate(PoolMaker(cfg, "/api/orders", "user"), DEFAULT_POOL, DEFAULT_MIX)
    out = workdir / "pool.jsonl"
    write_pool(entries, out, cfg.tokens.issuer)
    return out


def _status(url: str, path: str, token: str) -> int | None:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2.0)   # a fresh connection: any worker
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def settle(target: Target, pool: list[dict[str, Any]]) -> None:
    """With several workers, wait (bounded) until a revoked token is refused by every one we reach."""
    sample = next((row for row in pool if row["kind"] == "revoked"), None)
    if sample is None or not target.workers or target.workers < 2:
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(_status(target.url, sample["path"], sample["token"]) == sample["expect"]
               for _ in range(4 * target.workers)):
            return
        time.sleep(0.05)
    raise StartFailed(f"{target.name}: a revoked token was still accepted {SETTLE_TIMEOUT_S:g}s after revoking it")


def prepare(stack: Stack, pool_path: Path, pool: list[dict[str, Any]], token: str | None = None) -> None:
    """Revoke the pool's revoked tokens on every gateway (``token``: the admin port's bearer token)."""
    rows = revoked_rows(pool_path)
    for target in stack.targets:
        if target.gateway and target.admin_url:
            failures = revoke(target.admin_url, rows, token)
            if failures:
                raise StartFailed(f"{target.name}: revoking failed: {failures[0]}")
            settle(target, pool)


def run_started(args: Any, cfg: Any, load_factory: Any) -> int:
    """The whole `run --start`; ``load_factory(pool, workdir)`` gives the compare.Load to use."""
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="tokengate-loadtest-") as tmp:
            workdir = Path(tmp)
            pool_path = Path(args.pool) if args.pool else make_pool(cfg, workdir)
            pool = read_pool(pool_path)
            shared = cfg.store.url.startswith("memory:") and max(args.workers) > 1
            with Stack(Path(args.config), args.workers, args.compare, args.cpus, workdir, shared) as stack:
                prepare(stack, pool_path, pool, admin_token(cfg))
                if args.cpus:
                    os.sched_setaffinity(0, args.cpus.load)   # the load generator (and wrk, its child)
                targets = [t for t in stack.targets if args.compare or t.gateway]
                rounds = args.rounds or (2 if len(targets) > 1 else 1)
                results = compare.run_rounds(targets, rounds, load_factory(pool, workdir),
                                             lambda line: print(line, file=sys.stderr, flush=True))
                return _report(args, stack, targets, rounds, results, pool_path)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(args: Any, stack: Stack, targets: list[Target], rounds: int,
            results: dict[str, list[dict[str, Any]]], pool_path: Path) -> int:
    summary = compare.summarise(targets, results)
    for row in summary["rows"]:
        if row["gateway"]:
            print(f"== {row['target']}, best round ({row['best_round']} of {rounds})")
            print(report.text(results[row["target"]][row["best_round"] - 1]))
            wrong = [i + 1 for i, r in enumerate(results[row["target"]]) if not r["correct"]]
            if wrong:
                print(f"NOT correct in round(s) {', '.join(map(str, wrong))}")
    print()
    print(compare.table(summary, rounds))
    for note in stack.notes:
        print(f"NOTE: {note}")
    if args.cpus:
        print(f"NOTE: pinned: proxies on CPU {sorted(args.cpus.proxy)}, "
              f"upstream and load on CPU {sorted(args.cpus.load)}")
    if args.json:
        data = {"driver": results[targets[0].name][0]["driver"], "rounds": rounds, "notes": stack.notes,
                "pool": str(pool_path) if args.pool else "made for this run",
                "cpus": {"proxy": sorted(args.cpus.proxy), "load": sorted(args.cpus.load)} if args.cpus else None,
                "summary": summary, "targets": results}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.png:
        _write_png(Path(args.png), summary, results, rounds)
    return 0 if summary["correct"] else 1


def _write_png(out: Path, summary: dict[str, Any], results: dict[str, list[dict[str, Any]]], rounds: int) -> None:
    """One figure, a line per target: its best round (the one the table shows)."""
    runs = [(f"{row['target']} (round {row['best_round']})", results[row["target"]][row["best_round"] - 1])
            for row in summary["rows"]]
    driver = runs[0][1]["driver"]
    kept = f"best of {rounds} interleaved rounds per target, by req/s" if rounds > 1 else "one round per target"
    title = f"run --start: {kept} (driver {driver})"
    message = chart.render_png(runs, out, title)
    if message:
        print(message, file=sys.stderr)


def parse_cpus(text: str) -> Pinning:
    """'0:1' or '0:1,2' -> Pinning(proxy={0}, load={1} / {1, 2}); ValueError on bad input."""
    proxy, sep, load = text.partition(":")
    if not sep:
        raise ValueError("write --cpus PROXY:LOAD, like 0:1 (the proxy on CPU 0, the load on CPU 1)")
    sets = [frozenset(int(c) for c in part.split(",")) for part in (proxy, load)]
    allowed = os.sched_getaffinity(0)
    if not all(sets) or not all(s <= allowed for s in sets):
        raise ValueError(f"CPUs must be among {sorted(allowed)}")
    return Pinning(sets[0], sets[1])
