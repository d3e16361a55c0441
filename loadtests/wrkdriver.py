"""The wrk driver: runs `wrk` with tally.lua over the pool and reads what its done() wrote back into
the kit's report (the same structure as the asyncio driver's: report.assemble + the tally).

wrk attributes an answer to its token by the `X-Request-Id: lt-<slot>` the target echoes. Answers
without it are counted by status only ("unattributed") and checked against the statuses the
unattributed tokens should have got, by count: reported as such, never attributed by guess.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import report
from .driver import REQUEST_TIMEOUT_S, Plan

SCRIPT = Path(__file__).with_name("tally.lua")
PROGRESS_EVERY_S = 0.25
KILL_GRACE_S = 10.0
DEFAULT_DURATION_S = 10.0
INSTALL_HINT = "wrk is not installed (Debian/Ubuntu: apt-get install wrk)"


class WrkFailed(Exception):
    """wrk exited without writing its results (the message carries what it said)."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def write_inputs(pool: Sequence[dict[str, Any]], workdir: Path, run_s: int) -> tuple[Path, Path, Path]:
    """The pool as `path<TAB>token` lines (mode 0600), the script (counting answers in ``run_s`` 1 s
    buckets), and where its results will go."""
    pool_path, script_path, out_path = workdir / "wrk-pool.tsv", workdir / "wrk-tally.lua", workdir / "wrk-out.json"
    pool_path.touch(mode=0o600)
    pool_path.chmod(0o600)
    pool_path.write_text("".join(f"{row['path']}\t{row['token']}\n" for row in pool))
    for path in (pool_path, out_path):
        if "]==]" in str(path):
            raise WrkFailed(f"cannot pass the path {path} to Lua")
    curve = "{" + ", ".join(f"{p:g}" for p in report.CURVE_PERCENTILES) + "}"
    script = SCRIPT.read_text().replace("@SECONDS@", str(run_s)).replace("@CURVE@", curve)
    script_path.write_text(script.replace("@POOL@", str(pool_path)).replace("@OUT@", str(out_path)))
    out_path.unlink(missing_ok=True)
    return pool_path, script_path, out_path


def seconds(plan: Plan) -> int:
    """wrk runs for a whole number of seconds: the plan's duration (wrk knows no request count)."""
    return max(1, math.ceil(min(plan.duration_s or DEFAULT_DURATION_S, plan.hard_cap_s)))


def command(wrk: str, plan: Plan, script: Path, threads: int) -> list[str]:
    return [wrk, "-t", str(threads), "-c", str(max(plan.concurrency, threads)), "-d", f"{seconds(plan)}s",
            "--timeout", f"{REQUEST_TIMEOUT_S:g}s", "-s", str(script), plan.url + "/"]


def run_wrk(plan: Plan, pool: Sequence[dict[str, Any]], expects: Sequence[int] | None, workdir: Path,
            out: TextIO = sys.stderr) -> dict[str, Any]:
    """Run wrk once against ``plan.url``; the report (with a tally when ``expects`` is given)."""
    wrk = find_wrk()
    if wrk is None:
        raise WrkFailed(INSTALL_HINT)
    threads = max(1, min(len(os.sched_getaffinity(0)), plan.concurrency))
    _, script, out_path = write_inputs(pool, workdir, seconds(plan))
    argv = command(wrk, plan, script, threads)
    with open(workdir / "wrk.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait(proc, seconds(plan), plan.progress, out)
    finally:
        if proc.poll() is None:   # interrupted: wrk must not outlive the run
            proc.kill()
            proc.wait(5)
    if proc.returncode != 0 or not out_path.exists():
        said = (workdir / "wrk.log").read_text(errors="replace")[-2000:]
        raise WrkFailed(f"wrk exited with status {proc.returncode} against {plan.url}:\n{said}")
    return to_report(json.loads(out_path.read_text()), plan, [row["kind"] for row in pool], expects)


def _wait(proc: subprocess.Popen[bytes], total_s: int, progress: bool, out: TextIO) -> None:
    """Wait for wrk (bounded: its -d plus a grace, then kill), drawing a time-based bar on ``out``."""
    start = time.monotonic()
    deadline = start + total_s + KILL_GRACE_S
    while True:
        try:
            proc.wait(PROGRESS_EVERY_S)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                break
        if progress:
            _bar(out, time.monotonic() - start, total_s)
    if progress:
        _bar(out, time.monotonic() - start, total_s, final=True)


def _bar(out: TextIO, elapsed: float, total_s: int, final: bool = False) -> None:
    filled = int(min(1.0, elapsed / max(total_s, 1)) * 30)
    out.write(f"\rwrk [{'#' * filled}{'.' * (30 - filled)}] {elapsed:5.1f}/{total_s}s" + ("\n" if final else ""))
    out.flush()


def to_report(raw: dict[str, Any], plan: Plan, kinds: Sequence[str],
              expects: Sequence[int] | None) -> dict[str, Any]:
    """What done() wrote -> the kit's report structure."""
    counts: Counter[tuple[int, int]] = Counter()
    unattributed: Counter[int] = Counter()
    for key, n in raw["tally"]:
        if key < 0:
            unattributed[-key] += n
        else:
            counts[(key // 1000, key % 1000)] += n
    statuses: Counter[int] = Counter(unattributed)
    for (_, status), n in counts.items():
        statuses[status] += n
    lat = {k: v / 1000.0 for k, v in raw["latency_us"].items()}
    errors = {f"wrk_{k}": v for k, v in raw["errors"].items() if k != "status" and v}
    data = report.assemble(plan.url, sum(statuses.values()), raw["duration_us"] / 1e6, lat, errors, statuses,
                           driver="wrk")
    data["cut_short"] = False
    data["throughput_per_s"] = raw["per_second"]
    if data["requests"]:
        data["latency_curve_ms"] = report.latency_curve(
            lat["min"], [(p, us / 1000.0) for p, us in raw["latency_curve_us"]], lat["max"])
    if expects is not None:
        report.add_tally(data, report.tally_counts(counts, kinds, expects))
        if unattributed:
            slack = plan.concurrency + data["errors"]["count"]   # in flight when wrk stopped, or failed
            check = by_count(unattributed, counts, dict(raw["sent"]), expects, slack)
            data["unattributed"] = check
            data["correct"] = data["correct"] and check["consistent_by_count"]
    return data


def by_count(unattributed: Counter[int], counts: Counter[tuple[int, int]], sent: dict[int, int],
             expects: Sequence[int], slack: int) -> dict[str, Any]:
    """Do the unattributed statuses fit the tokens sent but not attributed? (``slack``: in flight at the end.)"""
    attributed: Counter[int] = Counter()
    for (slot, _), n in counts.items():
        attributed[slot] += n
    left: Counter[int] = Counter()
    for slot, n in sent.items():
        left[expects[slot]] += max(0, n - attributed[slot])
    fits = all(n <= left[status] for status, n in unattributed.items())
    total = sum(unattributed.values())
    consistent = fits and sum(left.values()) - total <= slack
    return {"count": total, "status": {str(s): n for s, n in sorted(unattributed.items())},
            "expected_left": {str(s): n for s, n in sorted(left.items())}, "consistent_by_count": consistent}
