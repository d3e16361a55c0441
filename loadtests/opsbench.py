"""What operations cost under load: a reload (SIGHUP) and a worker that dies.

    python -m loadtests.opsbench --config C [--pool P] [--workers 2] [--rate 300/s] [--duration 20s]
        [--reload-every 2s] [--kills 3] [--json out.json]

Starts the kit's stack (the fast upstream, `tokengate serve` with ``--workers`` on a copy of C, a
redis-server when C's store is memory://), revokes the pool's revoked tokens, then loads the same
gateway three times at a steady ``--rate`` (the asyncio driver):

- quiet: nothing else happens; p50/p99 are the baseline;
- reloads: a SIGHUP goes to the gateway's process every ``--reload-every``; p99 and its ratio to the
  quiet one, and from the gateway's log each worker's reload figures (``apply_ms``: the event-loop
  time a worker spends on one reload; ``read_ms``: reading and validating the file, in the reader);
- kills: ``--kills`` times (at most RESTARTS_PER_MINUTE - 1, the supervisor's own limit), SIGKILL
  one worker (its pid from the admin /healthz) and poll /healthz over fresh connections until a
  worker that was not there before answers: kill-to-serving, per kill. Requests on the killed
  worker's connections fail (SIGKILL); they are counted, not hidden.

Every loop is bounded in count and time, and talks to 127.0.0.1 only. Compare two trees by running
this module from each (``git worktree``), one after the other on the same machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .arguments import duration, positive, rate
from .driver import Plan, Results, run_load
from .procs import StartFailed
from .report import percentile
from .stack import Stack, Target
from .startrun import make_pool, prepare
from .tokenpool import read_pool

KILL_WAIT_S = 30.0     # a replacement that does not serve by then is reported as such
MAX_KILLS = 4          # the supervisor stops after 5 restarts in a minute


def _healthz_pid(admin_url: str) -> int | None:
    host, _, port = admin_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=1.0)   # fresh: the kernel picks a worker
    try:
        conn.request("GET", "/healthz")
        return int(json.loads(conn.getresponse().read())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        conn.close()


def _workers(target: Target, count: int) -> set[int]:
    assert target.admin_url is not None
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        pid = _healthz_pid(target.admin_url)
        if pid is not None:
            seen.add(pid)
    return seen


def _figures(results: Results) -> dict[str, Any]:
    latencies = sorted(results.latency_ms)
    return {"requests": len(latencies), "errors": results.errors,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None}


# The gateway's reload line, in either log format: "... read in 68 ms by pid 123, applied in 1.5 ms".
_RELOADED = re.compile(r"config reload: reloaded from .* read in (\d+) ms by pid \d+, applied in ([\d.]+) ms")


def _reload_records(log_path: Path) -> list[dict[str, float]]:
    """Each worker's reload figures (an older gateway's line has none: the list is empty)."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if (m := _RELOADED.search(line)) is not None:
            found.append({"read_ms": float(m.group(1)), "apply_ms": float(m.group(2))})
    return found


class _Every(threading.Thread):
    """Calls ``action`` every ``interval_s`` until stopped (at most ``limit`` times)."""

    def __init__(self, interval_s: float, limit: int, action: Any) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.limit, self.action = interval_s, limit, action
        self.stopped = threading.Event()
        self.results: list[Any] = []

    def run(self) -> None:
        for _ in range(self.limit):
            if self.stopped.wait(self.interval_s):
                return
            self.results.append(self.action())


def _signal_to_all_applied(target: Target, workers: int) -> float | None:
    """One more SIGHUP, with no load: seconds until every worker has logged its reload (None: not
    within KILL_WAIT_S, or a gateway whose log line has no figures)."""
    log_path = target.process.log_path
    before = len(_reload_records(log_path))
    sent = time.monotonic()
    target.process.proc.send_signal(signal.SIGHUP)
    while time.monotonic() - sent < KILL_WAIT_S:
        if len(_reload_records(log_path)) >= before + workers:
            return time.monotonic() - sent
        time.sleep(0.005)
    return None


def _kill_one(target: Target) -> float | None:
    """SIGKILL a worker; seconds until a worker that was not there answers /healthz (None: not in time)."""
    assert target.admin_url is not None and target.workers
    before = _workers(target, target.workers)
    victim = next(iter(before))
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - killed_at < KILL_WAIT_S:
        pid = _healthz_pid(target.admin_url)
        if pid is not None and pid not in before:
            return time.monotonic() - killed_at
        time.sleep(0.005)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.config.load import load_config

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="tokengate-opsbench-") as tmp:
        workdir = Path(tmp)
        pool_path = Path(args.pool) if args.pool else make_pool(cfg, workdir)
        pool = read_pool(pool_path)
        shared = cfg.store.url.startswith("memory:") and args.workers > 1
        with Stack(Path(args.config), [args.workers], False, None, workdir, shared) as stack:
            prepare(stack, pool_path, pool)
            (target,) = [t for t in stack.targets if t.gateway]
            plan = Plan(target.url, duration_s=args.duration, rate=args.rate, concurrency=64, progress=False)
            out: dict[str, Any] = {"workers": args.workers, "rate": args.rate, "duration_s": args.duration}
            out["quiet"] = _figures(run_load(plan, pool))

            hups = _Every(args.reload_every, int(args.duration / args.reload_every) + 1,
                          lambda: target.process.proc.send_signal(signal.SIGHUP))
            hups.start()
            loaded = run_load(plan, pool)
            hups.stopped.set()
            hups.join()
            out["reloads"] = {**_figures(loaded), "signals": len(hups.results)}
            records = _reload_records(target.process.log_path)
            applies = [r["apply_ms"] for r in records]
            out["reloads"]["applied"] = len(records)
            if applies:
                out["reloads"]["apply_ms"] = {"median": statistics.median(applies), "max": max(applies)}
                out["reloads"]["read_ms"] = statistics.median(r["read_ms"] for r in records)
            out["reloads"]["p99_vs_quiet"] = out["reloads"]["p99_ms"] / out["quiet"]["p99_ms"]
            out["reloads"]["signal_to_all_applied_s"] = _signal_to_all_applied(target, args.workers)

            if args.kills and args.workers > 1:
                kills = _Every(args.duration / (args.kills + 1), args.kills, lambda: _kill_one(target))
                kills.start()
                loaded = run_load(plan, pool)
                kills.stopped.set()
                kills.join()
                out["kills"] = {**_figures(loaded), "kill_to_serving_s": kills.results}
            return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.opsbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--pool")
    parser.add_argument("--workers", type=positive, default=2)
    parser.add_argument("--rate", type=rate, default=300.0)
    parser.add_argument("--duration", type=duration, default=20.0)
    parser.add_argument("--reload-every", type=duration, default=2.0)
    parser.add_argument("--kills", type=int, choices=range(MAX_KILLS + 1), default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except StartFailed as exc:
        print(f"opsbench: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
