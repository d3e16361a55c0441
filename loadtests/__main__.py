"""`python -m loadtests pool | revoke | run`: make a token pool, revoke its revoked kind on a
running gateway, and load that gateway with it. Exit 0: all correct, 1: a mismatch, 2: bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import ConfigError, load_config
from gateway.durations import parse_duration_s

from . import report
from .driver import Plan, RemoteTarget, check_target, run_load
from .tokenpool import DEFAULT_MIX, PoolError, PoolMaker, generate, parse_mix, read_jsonl, read_pool, \
    sidecar_path, write_pool

REVOKE_CONCURRENCY = 16


class UsageError(Exception):
    """Bad input: a message for people, exit 2."""


def _duration(value: str) -> float:
    try:
        return parse_duration_s(value if not value.replace(".", "", 1).isdigit() else f"{value}s")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(value: str) -> float:
    number = value.strip().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a rate; write requests per second, like 500/s") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError("the rate must be above 0")
    return rate


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number above 0")
    return int(value)


def _load(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(f"the config cannot be used:\n{exc}") from None


def cmd_pool(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    mix = parse_mix(args.mix) if args.mix else DEFAULT_MIX
    maker = PoolMaker(cfg, args.path, args.role, ttl_s=args.ttl)
    entries = generate(maker, args.count, mix, seed=args.seed)
    out = Path(args.out)
    side = write_pool(entries, out, cfg.tokens.issuer)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.kind] = counts.get(entry.kind, 0) + 1
    print(f"wrote {len(entries)} tokens for GET {args.path} to {out} "
          f"({', '.join(f'{k} {n}' for k, n in counts.items())})")
    print(f"revoked jtis: {side} ({counts.get('revoked', 0)}); tell the gateway with: "
          f"python -m loadtests revoke --config {args.config} --pool {out}")
    return 0


async def _post_all(admin: str, rows: list[dict[str, Any]]) -> list[str]:
    failures: list[str] = []
    gate = asyncio.Semaphore(REVOKE_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                try:
                    body = {"jti": row["jti"], "iss": row["iss"]}
                    async with session.post(f"{admin}/admin/revoke", json=body) as resp:
                        if resp.status != 200:
                            failures.append(f"jti {row['jti']}: HTTP {resp.status} {await resp.text()}")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    failures.append(f"jti {row['jti']}: {type(exc).__name__} {exc}")

        await asyncio.gather(*(one(row) for row in rows))
    return failures


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.admin is None and args.config is None:
        raise UsageError("name the admin port with --admin URL (or give --config to use its admin section)")
    if args.admin is None:
        cfg = _load(args.config)
        args.admin = f"http://{cfg.admin.host}:{cfg.admin.port}"
    admin = check_target(args.admin, args.allow_remote)
    side = sidecar_path(Path(args.pool))
    if not side.exists():
        raise UsageError(f"{side} does not exist: make the pool with `python -m loadtests pool` first")
    rows = read_jsonl(side)
    failures = asyncio.run(_post_all(admin, rows))
    for failure in failures[:10]:
        print(f"revoke failed: {failure}", file=sys.stderr)
    print(f"revoked {len(rows) - len(failures)} of {len(rows)} tokens at {admin}")
    return 1 if failures else 0


def cmd_run(args: argparse.Namespace) -> int:
    url = check_target(args.url, args.allow_remote)
    pool = read_pool(Path(args.pool))
    duration = args.duration if args.duration is not None or args.requests else 10.0
    progress = not args.no_progress and sys.stderr.isatty()
    plan = Plan(url, requests=args.requests, duration_s=duration, concurrency=args.concurrency,
                rate=args.rate, progress=progress, max_time_s=args.max_time)
    results = run_load(plan, pool)
    data = report.build(results, [int(row["expect"]) for row in pool], url)
    print(report.text(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.png:
        message = report.render_png(results, data, Path(args.png))
        if message:
            print(message, file=sys.stderr)
    return 0 if data["correct"] else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests", description="tokengate's load-testing kit")
    sub = p.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="make a labelled token pool for a config")
    pool.add_argument("--config", required=True)
    pool.add_argument("--out", required=True, help="the pool file (JSON lines); revoked jtis go to OUT.revoke.jsonl")
    pool.add_argument("--count", type=_positive, default=10_000)
    pool.add_argument("--mix", help="KIND=WEIGHT,... (default: " + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()) + ")")
    pool.add_argument("--path", default="/api/orders", help="the GET path every token is sent to")
    pool.add_argument("--role", default="user", help="the role valid tokens carry")
    pool.add_argument("--ttl", type=_duration, help="token lifetime (default: the config's tokens.access_ttl)")
    pool.add_argument("--seed", type=int, help="shuffle seed (default: random)")
    pool.set_defaults(func=cmd_pool)
    revoke = sub.add_parser("revoke", help="revoke the pool's revoked tokens with POST /admin/revoke")
    revoke.add_argument("--config")
    revoke.add_argument("--pool", required=True)
    revoke.add_argument("--admin", help="the gateway's admin URL (default: from the config's admin section)")
    revoke.add_argument("--allow-remote", action="store_true")
    revoke.set_defaults(func=cmd_revoke)
    run = sub.add_parser("run", help="load a running gateway with the pool and report")
    run.add_argument("--url", required=True)
    run.add_argument("--pool", required=True)
    bound = run.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=_duration, help="how long to send requests (default 10s)")
    bound.add_argument("--requests", type=_positive, help="how many requests to send")
    run.add_argument("--max-time", type=_duration, help="hard cap on the run (default: duration + 10s, or 130s)")
    run.add_argument("--concurrency", type=_positive, default=64)
    run.add_argument("--rate", type=_rate, help="fixed rate, like 500/s (default: full speed)")
    run.add_argument("--json", help="write the report as JSON here")
    run.add_argument("--png", help="write a latency + throughput chart here (needs matplotlib)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    run.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, PoolError, RemoteTarget) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
