"""Instructions per proxied request, counted by callgrind: a figure that a shared, noisy machine
does not move (the same code and load give the same count within about 1 %).

`python -m loadtests.callgrind --config C --pool P [--seconds 20] [--warm 10] [--connections 8]
[--driver wrk|asyncio] [--json F]`

Starts the kit's fast upstream, then, one after the other, the plain proxy and `tokengate serve` (one
worker, on a copy of C pointed at that upstream) under `valgrind --tool=callgrind
--instr-atstart=no`. For each: a warm-up with wrk over the pool (so that cached tokens are cached),
counting switched on, `--seconds` of the same load, counting off, and the program's instruction total
divided by wrk's request count. Prints both figures and their ratio. Needs valgrind, and wrk unless
`--driver asyncio`: the kit's asyncio driver makes the load instead (the one that signs the proofs of
a DPoP pool; compare a Bearer pool under the same driver, since its requests carry other headers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.config.load import ConfigError, load_config

from .arguments import positive
from .driver import Plan, run_load
from .procs import Child, StartFailed, free_port, free_ports, python, spawn, wait_ready
from .proofs import NO_PROOFS_IN_WRK, needs_proofs
from .stack import gateway_config, write_private
from .tokenpool import PoolError, read_pool

READY_UNDER_VALGRIND_S = 300.0   # Python and the gateway's imports, 20-50 times slower
MIN_COUNTED = 20    # requests a figure rests on, at the least
MAX_ROUNDS = 10     # warm-up or counting rounds tried before a target is given up
WRK_GRACE_S = 30.0
REQUESTS_IN = re.compile(rb"^\s*(\d+) requests in ", re.MULTILINE)
# wrk rotates through the pool: one `path<TAB>token` line per request, in turn.
LUA = """
local rows = {}
for line in io.lines([==[@POOL@]==]) do
  local path, token = line:match("^([^\\t]+)\\t(.+)$")
  rows[#rows + 1] = {path, token}
end
local i = 0
request = function()
  i = i % #rows + 1
  return wrk.format("GET", rows[i][1], {["Authorization"] = "Bearer " .. rows[i][2]})
end
"""


class Missing(Exception):
    """A tool the count needs is not installed (the message says how to get it)."""


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Missing(f"{name} is not installed (Debian/Ubuntu: apt-get install {package})")
    return path


def write_script(pool: Sequence[dict[str, Any]], workdir: Path) -> Path:
    rows = workdir / "pool.tsv"   # tokens: readable by this user only
    rows.touch(mode=0o600)
    rows.write_text("".join(f"{row['path']}\t{row['token']}\n" for row in pool))
    script = workdir / "rotate.lua"
    script.write_text(LUA.replace("@POOL@", str(rows)))
    return script


def run_wrk(wrk: str, url: str, script: Path, seconds: int, connections: int) -> int:
    """Requests wrk completed in ``seconds``."""
    done = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                          capture_output=True, timeout=seconds + WRK_GRACE_S, check=False)
    found = REQUESTS_IN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise StartFailed(f"wrk failed against {url}: {(done.stdout + done.stderr).decode(errors='replace')[-500:]}")
    return int(found.group(1))


def run_asyncio(url: str, pool: Sequence[dict[str, Any]], seconds: int, connections: int) -> int:
    """Requests the asyncio driver got an answer to in ``seconds`` (with a fresh proof each for DPoP kinds)."""
    results = run_load(Plan(url.rstrip("/"), duration_s=seconds, concurrency=connections, progress=False), pool)
    return len(results.status) - results.errors


def instructions(prefix: Path) -> int:
    """The instruction totals of every dump callgrind wrote for one process (PREFIX, PREFIX.1 ...)."""
    total = 0
    for dump in prefix.parent.glob(prefix.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


Load = Callable[[str, int], int]   # (url, seconds) -> requests answered


def make_load(args: argparse.Namespace, pool: Sequence[dict[str, Any]], workdir: Path, tools: dict[str, str]) -> Load:
    """The load of ``args.driver`` over the pool: wrk rotating through it, or the asyncio driver."""
    if args.driver == "asyncio":
        return lambda url, seconds: run_asyncio(url, pool, seconds, args.connections)
    script = write_script(pool, workdir)
    return lambda url, seconds: run_wrk(tools["wrk"], url, script, seconds, args.connections)


def count(name: str, argv: list[str], port: int, ready: tuple[int, str, int | None], load: Load,
          args: argparse.Namespace, workdir: Path, tools: dict[str, str]) -> dict[str, Any]:
    """One target under callgrind: warm it, count ``args.seconds`` of load, stop it."""
    dump = workdir / f"{name}.callgrind"
    child: Child = spawn(name, [tools["valgrind"], "--tool=callgrind", "--instr-atstart=no",
                                f"--callgrind-out-file={dump}", *argv], workdir)
    try:
        wait_ready(child, ready[0], ready[1], want=ready[2], timeout_s=READY_UNDER_VALGRIND_S)
        url = f"http://127.0.0.1:{port}/"
        # On a loaded machine a target under valgrind may answer nothing for a while: warm until it has
        # answered, and count until MIN_COUNTED requests were served (instrumentation stays on between
        # rounds), each within a bound.
        for _ in range(MAX_ROUNDS):
            if load(url, args.warm) > 0:
                break
        subprocess.run([tools["callgrind_control"], "-i", "on", str(child.pid)], capture_output=True, check=True)
        requests = 0
        for _ in range(MAX_ROUNDS):
            requests += load(url, args.seconds)
            if requests >= MIN_COUNTED:
                break
        subprocess.run([tools["callgrind_control"], "-i", "off", str(child.pid)], capture_output=True, check=True)
        subprocess.run([tools["callgrind_control"], "-d", str(child.pid)], capture_output=True, check=True)
    finally:
        child.stop()
    total = instructions(dump)
    print(f"{name}: {total:,} instructions / {requests:,} requests", file=sys.stderr, flush=True)
    return {"requests": requests, "instructions": total, "per_request": round(total / requests) if requests else None}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.callgrind", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the gateway's config (as `loadtests config` writes it)")
    p.add_argument("--pool", required=True, help="a token pool (valid tokens: every request is proxied)")
    p.add_argument("--seconds", type=positive, default=20, help="counted load per target (default 20)")
    p.add_argument("--warm", type=positive, default=10, help="seconds of load before counting (default 10: "
                   "long enough for a 1,000-token pool to be seen once under valgrind)")
    p.add_argument("--connections", type=positive, default=8, help="wrk connections (default 8)")
    p.add_argument("--driver", choices=("wrk", "asyncio"), default="wrk", help="the load generator (default "
                   "wrk; asyncio for a DPoP pool: it signs the proofs)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    needed = (("valgrind", "valgrind"), ("callgrind_control", "valgrind"), ("wrk", "wrk"))
    try:
        load_config(args.config)
        pool = read_pool(Path(args.pool))
        if needs_proofs(pool) and args.driver == "wrk":
            raise PoolError(f"the pool holds DPoP-bound tokens: {NO_PROOFS_IN_WRK}; pass --driver asyncio")
        tools = {name: tool(name, package) for name, package in needed if name != "wrk" or args.driver == "wrk"}
    except (Missing, ConfigError, PoolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tokengate-callgrind-") as tmp:
        workdir = Path(tmp)
        load = make_load(args, pool, workdir, tools)
        up_port = free_port()
        upstream = spawn("upstream", python("loadtests.upstream", "--port", str(up_port)), workdir)
        try:
            wait_ready(upstream, up_port)
            upstream_url = f"http://127.0.0.1:{up_port}"
            plain_port = free_port()
            plain = count("plain proxy", python("loadtests.plainproxy", "--port", str(plain_port), "--upstream",
                                                upstream_url), plain_port, (plain_port, "/", None), load, args,
                          workdir, tools)
            port, admin_port = free_ports(2)
            copy = Path(args.config).parent / f".loadtest-callgrind-{os.getpid()}.yaml"   # key paths stay relative
            write_private(copy, gateway_config(Path(args.config), upstream_url, port, admin_port, 1, None))
            gateway = count("gateway", python("gateway", "serve", "--config", str(copy)), port,
                            (admin_port, "/readyz", 200), load, args, workdir, tools)
        except (StartFailed, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            upstream.stop()
            (Path(args.config).parent / f".loadtest-callgrind-{os.getpid()}.yaml").unlink(missing_ok=True)
    ratio = gateway["per_request"] / plain["per_request"] if plain["per_request"] and gateway["per_request"] else None
    print(f"instructions per request: plain proxy {plain['per_request']:,}, gateway {gateway['per_request']:,}"
          f" ({ratio:.2f}x the plain proxy)" if ratio else "no requests were counted")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain_proxy": plain, "gateway": gateway, "ratio": ratio}, indent=2))
    return 0 if ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
