"""The mirror benchmark on a tiny count: it runs end to end, writes its figures, and no revoked id
gets through (timings and memory are printed, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import bench_mirror


def test_the_benchmark_reports_every_figure_and_no_false_acceptance(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mirror.json"
    assert bench_mirror.main(["--count", "3000", "--probes", "3000", "--sample", "1500", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["count"] == 3000
    assert figures["false_acceptances"] == 0 and figures["applies"]["false_acceptances"] == 0
    assert figures["false_rejection_probes"] == 3000
    assert figures["purged"] + figures["left_after_purge"] == 3000
    for key in ("mirror_held_mb", "mirror_bytes_per_entry", "rss_growth_mb", "load_peak_above_list_mb",
                "load_s", "load_longest_loop_stall_ms", "purge_s", "check_revoked_us", "check_not_revoked_us"):
        assert isinstance(figures[key], float)
    assert "false acceptances" in capsys.readouterr().out


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_mirror.main(["--count", "0"])
    assert exc.value.code == 2


def test_ended_sessions_in_the_mirror_are_refused_too(tmp_path: Path) -> None:
    out = tmp_path / "mirror.json"
    assert bench_mirror.main(["--count", "2000", "--probes", "2000", "--sample", "1000", "--sid-share", "0.5",
                              "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["sid_share"] == 0.5 and figures["false_acceptances"] == 0
