"""`python -m loadtests pool | revoke | run`: make a token pool, revoke its revoked kind on a
running gateway, and load that gateway with it (or, with `run --start`, one the kit starts).
Exit 0: all correct, 1: a mismatch, 2: bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config.load import ConfigError, load_config

from . import chart, drivers, report
from .arguments import duration, positive, rate
from .benchconfig import LOAD_PATH, SECRET_VAR, write_bench_config
from .driver import RemoteTarget, check_target
from .procs import StartFailed
from .proofs import DPOP_KINDS
from .revocation import admin_token, revoke, revoked_rows
from .stack import Pinning
from .startrun import parse_cpus, run_started
from .tokenpool import DEFAULT_MIX, PoolError, PoolMaker, generate, parse_mix, read_pool, write_pool
from .wrkdriver import WrkFailed


class UsageError(Exception):
    """Bad input: a message for people, exit 2."""


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
    bound = sum(counts.get(kind, 0) for kind in DPOP_KINDS)
    if bound:
        print(f"DPoP-bound tokens: {bound}, their client keys kept in the pool; run them with the asyncio driver, "
              "which signs a fresh proof for each request (wrk cannot)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    write_bench_config(Path(args.out), args.routes, args.workers, args.store, args.lean)
    print(f"wrote {args.out}: HS256 (secret from ${{{SECRET_VAR}}}), {args.routes} routes, GET {LOAD_PATH} "
          f"needs role user, store {args.store}, {args.workers} worker(s), "
          f"{'no access log, no metrics' if args.lean else 'access log and metrics on (the defaults)'}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if args.admin is None and args.config is None:
        raise UsageError("name the admin port with --admin URL (or give --config to use its admin section)")
    cfg = _load(args.config) if args.config is not None else None
    if args.admin is None:
        args.admin = f"http://{cfg.admin.host}:{cfg.admin.port}"
    admin = check_target(args.admin, args.allow_remote)
    rows = revoked_rows(Path(args.pool))
    failures = revoke(admin, rows, admin_token(cfg))
    for failure in failures[:10]:
        print(f"revoke failed: {failure}", file=sys.stderr)
    print(f"revoked {len(rows) - len(failures)} of {len(rows)} tokens at {admin}")
    return 1 if failures else 0


def cmd_run(args: argparse.Namespace) -> int:
    _check_run_flags(args)
    wanted = args.driver
    args.driver = drivers.choose(wanted, args.rate, args.requests)
    if args.start:
        if args.pool:   # the pool the kit makes itself has no DPoP kinds
            args.driver = drivers.choose_for_pool(args.driver, wanted, read_pool(Path(args.pool)))
        return run_started(args, _load(args.config), lambda pool, workdir: drivers.loader(args, pool, workdir))
    url = check_target(args.url, args.allow_remote)
    pool = read_pool(Path(args.pool))
    args.driver = drivers.choose_for_pool(args.driver, wanted, pool)
    with tempfile.TemporaryDirectory(prefix="tokengate-loadtest-") as tmp:
        data = drivers.loader(args, pool, Path(tmp))(url, True)
    print(report.text(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.png:
        title = f"{url}: {data['requests']:,} requests, {data['requests_per_s']:,.0f} req/s (driver {args.driver})"
        message = chart.render_png([(url, data)], Path(args.png), title)
        if message:
            print(message, file=sys.stderr)
    return 0 if data["correct"] else 1


def _check_run_flags(args: argparse.Namespace) -> None:
    if args.png and not Path(args.png).resolve().parent.is_dir():
        raise UsageError(f"--png {args.png}: its directory does not exist")
    if not args.start:
        for flag, value in (("--compare", args.compare), ("--workers", args.workers != [1]),
                            ("--cpus", args.cpus), ("--rounds", args.rounds), ("--config", args.config)):
            if value:
                raise UsageError(f"{flag} needs --start (the kit starts what it compares and measures)")
        if not args.url or not args.pool:
            raise UsageError("name the target with --url and the token pool with --pool (or use --start --config C)")
    elif args.url:
        raise UsageError("--url and --start exclude each other: with --start the kit starts the gateway itself")
    elif not args.config:
        raise UsageError("--start needs --config C (the gateway config to serve, with its upstreams replaced)")


def _workers(value: str) -> list[int]:
    counts = [positive(part) for part in value.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("name each worker count once")
    return counts


def _cpus(value: str) -> Pinning:
    try:
        return parse_cpus(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests", description="tokengate's load-testing kit")
    sub = p.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="make a labelled token pool for a config")
    pool.add_argument("--config", required=True)
    pool.add_argument("--out", required=True, help="the pool file (JSON lines); revoked jtis go to OUT.revoke.jsonl")
    pool.add_argument("--count", type=positive, default=10_000)
    pool.add_argument("--mix", help="KIND=WEIGHT,... (default: " + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
                      + "; DPoP-bound: " + ", ".join(DPOP_KINDS) + ")")
    pool.add_argument("--path", default="/api/orders", help="the GET path every token is sent to")
    pool.add_argument("--role", default="user", help="the role valid tokens carry")
    pool.add_argument("--ttl", type=duration, help="token lifetime (default: the config's tokens.access_ttl)")
    pool.add_argument("--seed", type=int, help="shuffle seed (default: random)")
    pool.set_defaults(func=cmd_pool)
    config = sub.add_parser("config", help="write the hot-path benchmark's gateway config")
    config.add_argument("--out", required=True)
    config.add_argument("--routes", type=positive, default=1000, help="routes in all (default 1000)")
    config.add_argument("--workers", type=positive, default=1)
    config.add_argument("--store", default="memory://", help="store URL (default memory://)")
    config.add_argument("--lean", action="store_true", help="no access log and no metrics: the auth work alone")
    config.set_defaults(func=cmd_config)
    revoke = sub.add_parser("revoke", help="revoke the pool's revoked tokens with POST /admin/revoke")
    revoke.add_argument("--config")
    revoke.add_argument("--pool", required=True)
    revoke.add_argument("--admin", help="the gateway's admin URL (default: from the config's admin section)")
    revoke.add_argument("--allow-remote", action="store_true")
    revoke.set_defaults(func=cmd_revoke)
    run = sub.add_parser("run", help="load a running gateway with the pool and report")
    run.add_argument("--url", help="the running gateway to load (or --start)")
    run.add_argument("--pool", help="the token pool (with --start: made for the run when left out)")
    run.add_argument("--start", action="store_true", help="start the fast upstream and `tokengate serve` "
                     "on --config (upstreams pointed at it), load it, stop everything")
    run.add_argument("--config", help="with --start: the gateway config")
    run.add_argument("--workers", type=_workers, default=[1], help="with --start: worker counts, like 1,2 "
                     "(interleaved rounds, CPU per request of each)")
    run.add_argument("--compare", action="store_true", help="with --start: also load the direct upstream "
                     "and a plain aiohttp proxy, same run, and print ratios")
    run.add_argument("--rounds", type=positive, help="with --start: interleaved rounds per target, best one "
                     "kept (default 2 when there are several targets, else 1)")
    run.add_argument("--cpus", type=_cpus, help="with --start: PROXY:LOAD, like 0:1: the proxy under test on "
                     "CPU 0, the upstream and the load generator on CPU 1")
    run.add_argument("--driver", choices=("auto", "wrk", "asyncio"), default="auto",
                     help="auto (default): wrk when installed and no --rate/--requests, else asyncio")
    bound = run.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=duration, help="how long to send requests (default 10s)")
    bound.add_argument("--requests", type=positive, help="how many requests to send")
    run.add_argument("--max-time", type=duration, help="hard cap on the run (default: duration + 10s, or 130s)")
    run.add_argument("--concurrency", type=positive, default=64)
    run.add_argument("--rate", type=rate, help="fixed rate, like 500/s (default: full speed)")
    run.add_argument("--json", help="write the report as JSON here")
    run.add_argument("--png", help="write a latency + throughput chart here (needs matplotlib); with --start: "
                     "the best round of every target, a line each")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    run.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, PoolError, RemoteTarget, StartFailed, drivers.DriverChoice) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WrkFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: everything the kit started is stopped", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
