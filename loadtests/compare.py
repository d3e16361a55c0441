"""Rounds and the comparison table: the same load against every target in interleaved rounds, CPU
time read around each timed load, the best round per target (by req/s), and ratios against the plain
proxy and the direct upstream, plus the CPU per request of each gateway worker count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .stack import Target

Load = Callable[[str, bool], dict[str, Any]]   # (url, tally the answers?) -> one report


def measure(target: Target, load: Load) -> dict[str, Any]:
    """One timed load of ``target``, with the CPU its process tree spent meanwhile."""
    before = target.process.cpu_s()
    data = load(target.url, target.gateway)
    spent_ms = (target.process.cpu_s() - before) * 1000.0
    data["cpu_ms"] = round(spent_ms, 1)
    data["cpu_ms_per_1k"] = round(spent_ms * 1000.0 / data["requests"], 2) if data["requests"] else None
    return data


def run_rounds(targets: Sequence[Target], rounds: int, load: Load,
               announce: Callable[[str], None] = lambda _: None) -> dict[str, list[dict[str, Any]]]:
    """Round 1: every target once, in order; round 2: again; ... (interleaved, so drift hits all alike)."""
    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for number in range(1, rounds + 1):
        for target in targets:
            announce(f"round {number}/{rounds}: {target.name} ({target.url})")
            results[target.name].append(measure(target, load))
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarise(targets: Sequence[Target], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The best round per target by req/s, the ratios, and whether every gateway round was correct."""
    rows = []
    for target in targets:
        rounds = results[target.name]
        best = max(range(len(rounds)), key=lambda i: rounds[i]["requests_per_s"])
        data = rounds[best]
        rows.append({"target": target.name, "url": target.url, "gateway": target.gateway, "workers": target.workers,
                     "best_round": best + 1, "requests_per_s": data["requests_per_s"],
                     "p50_ms": data["latency_ms"]["p50"], "p99_ms": data["latency_ms"]["p99"],
                     "cpu_ms_per_1k": data["cpu_ms_per_1k"],
                     "correct": all(r["correct"] for r in rounds) if target.gateway else None})
    by_name = {row["target"]: row for row in rows}
    plain = by_name.get("plain proxy")
    direct = by_name.get("upstream (direct)")
    for row in rows:
        row["vs_plain_proxy"] = _ratio(row["requests_per_s"], plain["requests_per_s"]) if plain else None
        row["vs_upstream"] = _ratio(row["requests_per_s"], direct["requests_per_s"]) if direct else None
    gateways = [row for row in rows if row["gateway"]]
    cpu = {str(row["workers"]): row["cpu_ms_per_1k"] for row in gateways}
    base = gateways[0]["cpu_ms_per_1k"] if gateways else None
    return {"rows": rows, "gateway_cpu_ms_per_1k": cpu,
            "gateway_cpu_ratio": {str(row["workers"]): _ratio(row["cpu_ms_per_1k"], base) for row in gateways},
            "correct": all(row["correct"] for row in gateways)}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(summary: dict[str, Any], rounds: int) -> str:
    """A Markdown table (pastes into a README as is) and the lines that explain it."""
    lines = ["| target | req/s | p50 ms | p99 ms | CPU ms / 1k req | vs plain proxy | vs upstream |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary["rows"]:
        lines.append(f"| {row['target']} | {_num(row['requests_per_s'], ',.0f')} | {_num(row['p50_ms'], '.2f')} "
                     f"| {_num(row['p99_ms'], '.2f')} | {_num(row['cpu_ms_per_1k'], '.1f')} "
                     f"| {_num(row['vs_plain_proxy'], '.2f')}x | {_num(row['vs_upstream'], '.2f')}x |")
    lines.append(f"best of {rounds} interleaved round{'s' if rounds > 1 else ''} per target, by req/s; "
                 "CPU = user + sys of that target's process and its workers")
    ratios = summary["gateway_cpu_ratio"]
    if len(ratios) > 1:
        first = next(iter(ratios))
        lines.append("gateway CPU per request against " + f"{first} worker(s): "
                     + ", ".join(f"{w} workers {_num(r, '.2f')}x" for w, r in list(ratios.items())[1:]))
    return "\n".join(lines).replace(" -x ", " - ")
