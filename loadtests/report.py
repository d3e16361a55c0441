"""The report of one run: throughput (overall and per second), latency percentiles (and the curve
the chart draws), errors, status counts and the correctness tally per token kind, as text and JSON.
The PNG chart of reports is chart.py.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .driver import ERROR, Results

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# The latency curve's grid (tally.lua gets the same one from wrk): p1..p99, then ever finer into the tail.
CURVE_PERCENTILES = (*range(1, 100), 99.5, 99.9, 99.95, 99.99, 99.999)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    rank = math.ceil(round(p * len(sorted_values) / 100.0, 9))   # round: 99.9% of 1000 is 999, not 999.0000001
    return sorted_values[max(rank, 1) - 1]


def latency_curve(lowest: float, points: Sequence[tuple[float, float]], highest: float) -> list[list[float]]:
    """[percentile, ms] from 0 (the minimum) through ``points`` to 100 (the maximum), for the chart."""
    return [[0, round(lowest, 3)], *([p, round(ms, 3)] for p, ms in points), [100, round(highest, 3)]]


def _status_name(status: int) -> str:
    return "error" if status == ERROR else str(status)


def tally(results: Results, expects: Sequence[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per kind: expected status -> got counts; and the mismatches as (kind, expected, got, count)."""
    return tally_counts(Counter(zip(results.slot, results.status)), results.kinds, expects)


def tally_counts(counts: Mapping[tuple[int, int], int], kinds: Sequence[str],
                 expects: Sequence[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tally from (slot, status) -> count, however the answers were counted."""
    got: Counter[tuple[str, int, int]] = Counter()
    for (slot, status), count in counts.items():
        got[(kinds[slot], expects[slot], status)] += count
    per_kind: dict[str, Any] = {}
    mismatches = []
    for (kind, expected, status), count in sorted(got.items()):
        row = per_kind.setdefault(kind, {"expected": [], "got": {}, "requests": 0, "correct": 0})
        if expected not in row["expected"]:
            row["expected"].append(expected)
        row["got"][_status_name(status)] = row["got"].get(_status_name(status), 0) + count
        row["requests"] += count
        if status == expected:
            row["correct"] += count
        else:
            mismatches.append({"kind": kind, "expected": expected, "got": _status_name(status), "count": count})
    return per_kind, mismatches


def throughput(results: Results) -> list[int]:
    """Requests completed in each 1 s bucket of the run."""
    buckets = [0] * max(1, math.ceil(results.elapsed_s))
    for started, latency in zip(results.started, results.latency_ms):
        second = min(int(started + latency / 1000.0), len(buckets) - 1)
        buckets[second] += 1
    return buckets


def build(results: Results, expects: Sequence[int] | None, url: str) -> dict[str, Any]:
    """The whole report as plain data (what --json writes); no tally when ``expects`` is None."""
    ordered = sorted(results.latency_ms)
    count = len(ordered)
    latency: dict[str, float | None] = {f"p{p:g}": percentile(ordered, p) for p in PERCENTILES}
    latency.update(min=ordered[0] if ordered else None, max=ordered[-1] if ordered else None,
                   mean=sum(ordered) / count if count else None)
    data = assemble(url, count, results.elapsed_s, latency, dict(results.error_types),
                    Counter(results.status), driver="asyncio")
    data.update(cut_short=results.cut_short, throughput_per_s=throughput(results))
    if ordered:
        points = [(p, percentile(ordered, p) or 0.0) for p in CURVE_PERCENTILES]
        data["latency_curve_ms"] = latency_curve(ordered[0], points, ordered[-1])
    if expects is not None:
        add_tally(data, tally(results, expects))
    return data


def assemble(url: str, count: int, elapsed_s: float, latency: dict[str, float | None],
             error_types: dict[str, int], statuses: Mapping[int, int], driver: str) -> dict[str, Any]:
    """The parts of a report every driver fills in (no tally yet: see add_tally)."""
    return {"target": url, "driver": driver, "requests": count, "elapsed_s": round(elapsed_s, 3),
            "requests_per_s": round(count / max(elapsed_s, 1e-9), 1), "latency_ms": latency,
            "errors": {"count": sum(error_types.values()), "by_type": error_types},
            "status": {_status_name(s): n for s, n in sorted(statuses.items())},
            "tally": None, "mismatches": [], "correct": None, "cut_short": False, "throughput_per_s": [],
            "latency_curve_ms": []}


def add_tally(data: dict[str, Any], tallied: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    data["tally"], data["mismatches"] = tallied
    data["correct"] = data["requests"] > 0 and not data["mismatches"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def text(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    lines = [f"target      {report['target']}  (driver: {report['driver']})",
             f"requests    {report['requests']} in {report['elapsed_s']:.2f} s = {report['requests_per_s']:,.1f} req/s",
             "latency     " + "  ".join(f"{k} {_ms(lat[k])}" for k in ("p50", "p90", "p99", "p99.9")),
             f"            min {_ms(lat['min'])}  mean {_ms(lat['mean'])}  max {_ms(lat['max'])}",
             f"errors      {report['errors']['count']}"
             + "".join(f"  {name}: {n}" for name, n in report["errors"]["by_type"].items()),
             "status      " + "  ".join(f"{s}: {n}" for s, n in report["status"].items())]
    if report.get("cpu_ms_per_1k") is not None:
        lines.append(f"cpu         {report['cpu_ms_per_1k']:.1f} ms per 1,000 requests (the target process"
                     " and its workers, user + sys)")
    if report["cut_short"]:
        lines.append("NOTE: the hard time cap cut the run short")
    if report["tally"] is not None:
        lines += _tally_lines(report)
    return "\n".join(lines)


def _tally_lines(report: dict[str, Any]) -> list[str]:
    lines = ["correctness (kind: expected -> got)"]
    for kind, row in report["tally"].items():
        expected = "/".join(map(str, row["expected"]))
        got = ", ".join(f"{s} x{n}" for s, n in row["got"].items())
        mark = "ok" if row["correct"] == row["requests"] else "WRONG"
        lines.append(f"  {kind:<15} {expected:>7} -> {got}  [{mark}]")
    lines += [f"MISMATCH {m['kind']}: expected {m['expected']}, got {m['got']} x{m['count']}"
              for m in report["mismatches"]]
    if unattributed := report.get("unattributed"):
        said = ", ".join(f"{s} x{n}" for s, n in unattributed["status"].items())
        verdict = "consistent" if unattributed["consistent_by_count"] else "NOT consistent"
        lines.append(f"NOTE: {unattributed['count']} answers carried no X-Request-Id ({said}): checked by "
                     f"status count against the tokens left unattributed, not per token: {verdict}")
    lines.append("RESULT: all correct" if report["correct"] else "RESULT: NOT correct")
    return lines
