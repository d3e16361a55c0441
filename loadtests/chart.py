"""The PNG chart of load reports (matplotlib, if installed): latency against percentile and the
answers per second of the run, one line per report, so a `run --start` of several targets (its best
round of each) reads as one figure. Drawn only from what the reports keep, so wrk runs get it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Percentile p is drawn at 1 / (1 - p): each further "9" of the tail gets as much room as 0-90%.
TICKS = ((0, "0%"), (50, "50%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%"),
         (99.999, "99.999%"))
X_MAX = 1e5   # p99.999
MIN_BUCKET_S = 0.1


def _x(percentile: float) -> float:
    return 1.0 / (1.0 - percentile / 100.0)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_png(runs: Sequence[tuple[str, dict[str, Any]]], out: Path, title: str) -> str | None:
    """Draw each (label, report) into ``out``; a message instead when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return "no PNG written: matplotlib is not installed (pip install -e '.[loadtest]')"
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (curve, rate) = plt.subplots(2, 1, figsize=(9, 8.5))
    try:
        top = 0.0
        for label, data in runs:
            _draw_curve(curve, label, data)
            top = max([top, *_draw_rate(rate, label, data)])
        curve.set_xscale("log")
        curve.set_xticks([_x(p) for p, _ in TICKS], [name for _, name in TICKS])
        curve.minorticks_off()
        curve.set(title="latency by percentile (the legend gives p50 / p99 / max)",
                  xlabel="percentile (log scale of 1 / (1 - p): the tail spread out)", ylabel="latency (ms)",
                  xlim=(1.0, X_MAX), ylim=(0, None))
        curve.grid(True, alpha=0.3)
        curve.legend(fontsize="small", loc="upper left")
        rate.set(title="throughput over the run", xlabel="second of the run", ylabel="answers per second",
                 ylim=(0, top * 1.15 or 1))
        rate.xaxis.set_major_locator(MaxNLocator(integer=True))
        rate.grid(True, alpha=0.3)
        rate.legend(fontsize="small", loc="lower left")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
    return None


def _draw_curve(ax: Any, label: str, data: dict[str, Any]) -> None:
    points = [(p, ms) for p, ms in data["latency_curve_ms"] if p < 100]   # p100 (the max) is off the scale
    lat = data["latency_ms"]
    ax.plot([_x(p) for p, _ in points], [ms for _, ms in points], marker=".", markersize=3,
            label=f"{label}: p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, max {_ms(lat['max'])} ms")


def per_second(counts: Sequence[int], elapsed_s: float) -> tuple[list[float], list[float]]:
    """Bucket edges and answers per second. A last bucket cut short by the run's end (a run shorter
    than 1 s, or 2.3 s of a 2.3 s run) is drawn as wide as it was, its count scaled to a rate; a sliver
    under MIN_BUCKET_S after the last whole second (the answers in flight when a 2 s run stopped) is
    left out, as a rate over a few ms would say little."""
    n = len(counts)
    end = elapsed_s if n - 1 < elapsed_s < n else float(n)
    if n > 1 and end - (n - 1) < MIN_BUCKET_S:
        n, end = n - 1, float(n - 1)
    widths = [1.0] * (n - 1) + [end - (n - 1)]
    return [0.0, *range(1, n), end], [count / width for count, width in zip(counts, widths)]


def _draw_rate(ax: Any, label: str, data: dict[str, Any]) -> list[float]:
    if not data["throughput_per_s"]:
        return []
    edges, rates = per_second(data["throughput_per_s"], data["elapsed_s"])
    ax.stairs(rates, edges, baseline=None, linewidth=1.5,
              label=f"{label}: {data['requests_per_s']:,.0f} req/s over {data['elapsed_s']:.1f} s")
    return rates
