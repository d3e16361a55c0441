"""What every kit test expects of a report's chart data and of a written PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.report import CURVE_PERCENTILES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_is_a_chart(path: Path) -> None:
    """A PNG, and more than an empty canvas (the chart with its axes and text is tens of kB)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def assert_has_a_curve_and_a_rate(report: dict[str, Any]) -> None:
    """The JSON keeps what the chart draws: latency against percentile and answers per second."""
    curve = report["latency_curve_ms"]
    assert [p for p, _ in curve] == [0, *CURVE_PERCENTILES, 100]
    assert curve[0][1] == pytest.approx(report["latency_ms"]["min"], abs=1e-3)
    assert curve[-1][1] == pytest.approx(report["latency_ms"]["max"], abs=1e-3)
    assert all(a[1] <= b[1] for a, b in zip(curve, curve[1:]))
    assert report["throughput_per_s"] and all(n >= 0 for n in report["throughput_per_s"])
