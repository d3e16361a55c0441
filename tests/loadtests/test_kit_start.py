"""`run --start` end to end on tiny loads: the kit starts the fast upstream, the plain proxy and real
`tokengate serve` processes, compares them, reports CPU per request, drives wrk when it is there,
and refuses bad input with exit 2. Nothing here asserts how fast anything is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.loadtests.reportchecks import assert_has_a_curve_and_a_rate, assert_is_a_chart

REPO = Path(__file__).resolve().parents[2]
KIT_TIMEOUT_S = 90.0
pytestmark = pytest.mark.integration


def kit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtests", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=KIT_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _no_token_printed(out: str) -> None:
    assert "eyJ" not in out   # no token is ever printed


def test_compare_reports_three_rows_ratios_cpu_and_a_correct_tally(write_config: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    done = kit("run", "--start", "--config", str(write_config()), "--compare", "--driver", "asyncio",
               "--requests", "150", "--concurrency", "4", "--json", str(out), "--png", str(png), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    rows = {row["target"]: row for row in data["summary"]["rows"]}
    assert list(rows) == ["upstream (direct)", "plain proxy", "gateway, 1 worker"]
    assert data["rounds"] == 2 and all(len(rounds) == 2 for rounds in data["targets"].values())
    assert rows["plain proxy"]["vs_plain_proxy"] == 1.0 and rows["upstream (direct)"]["vs_upstream"] == 1.0
    assert rows["gateway, 1 worker"]["vs_plain_proxy"] > 0 and rows["gateway, 1 worker"]["vs_upstream"] > 0
    assert rows["gateway, 1 worker"]["cpu_ms_per_1k"] > 0 and data["summary"]["correct"] is True
    gateway_rounds = data["targets"]["gateway, 1 worker"]
    assert all(r["correct"] and r["requests"] == 150 and not r["mismatches"] for r in gateway_rounds)
    assert len(gateway_rounds[0]["tally"]) == 7 and data["targets"]["plain proxy"][0]["tally"] is None
    assert_has_a_curve_and_a_rate(gateway_rounds[0])
    assert_is_a_chart(png)   # the best round of each of the three targets
    assert "| gateway, 1 worker |" in done.stdout and "best of 2 interleaved rounds" in done.stdout
    assert "RESULT: all correct" in done.stdout
    _no_token_printed(done.stdout + done.stderr)
    assert not list(tmp_path.glob(".loadtest-*.yaml"))   # the config copy is gone


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (./dev.sh installs it)")
def test_worker_counts_each_get_their_cpu_per_request(write_config: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    done = kit("run", "--start", "--config", str(write_config()), "--workers", "1,2", "--driver", "asyncio",
               "--requests", "150", "--concurrency", "4", "--rounds", "1", "--json", str(out), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())["summary"]
    assert set(summary["gateway_cpu_ms_per_1k"]) == {"1", "2"}
    assert all(ms > 0 for ms in summary["gateway_cpu_ms_per_1k"].values())
    assert summary["gateway_cpu_ratio"]["1"] == 1.0 and summary["correct"] is True
    assert "gateway CPU per request against 1 worker(s): 2 workers" in done.stdout
    assert "redis-server the kit started" in done.stdout


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not installed (apt-get install wrk; ./dev.sh test installs it)")
def test_wrk_driver_end_to_end(write_config: Callable[..., Path], tmp_path: Path) -> None:
    out, png = tmp_path / "wrk.json", tmp_path / "wrk.png"
    done = kit("run", "--start", "--config", str(write_config()), "--driver", "wrk", "--duration", "2s",
               "--concurrency", "4", "--json", str(out), "--png", str(png), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["driver"] == "wrk"
    report = data["targets"]["gateway, 1 worker"][0]
    assert report["requests"] > 0 and report["correct"] is True and report["errors"]["count"] == 0
    assert report["tally"]["valid"]["correct"] == report["tally"]["valid"]["requests"] > 0
    assert_has_a_curve_and_a_rate(report)
    assert len(report["throughput_per_s"]) == 2 and sum(report["throughput_per_s"]) == report["requests"]
    assert_is_a_chart(png)
    if "unattributed" in report:   # the gateway does not echo X-Request-Id on its own errors yet
        assert report["unattributed"]["consistent_by_count"] is True
    else:
        assert set(report["tally"]) == {"valid", "expired", "revoked", "bad_signature", "wrong_audience",
                                        "unknown_kid", "wrong_role"}
    _no_token_printed(done.stdout + done.stderr)


@pytest.mark.parametrize("args, said", [
    (["--compare", "--url", "http://127.0.0.1:1", "--pool", "p.jsonl"], "--compare needs --start"),
    (["--workers", "1,2", "--url", "http://127.0.0.1:1", "--pool", "p.jsonl"], "--workers needs --start"),
    (["--start"], "--start needs --config"),
    (["--start", "--config", "c.yaml", "--url", "http://127.0.0.1:1"], "exclude each other"),
    (["--driver", "nope", "--url", "http://127.0.0.1:1", "--pool", "p.jsonl"], "invalid choice"),
    (["--driver", "wrk", "--rate", "10/s", "--url", "http://127.0.0.1:1", "--pool", "p.jsonl"], "fixed rate"),
    (["--cpus", "0-1", "--start", "--config", "c.yaml"], "PROXY:LOAD"),
    (["--start", "--config", "c.yaml", "--png", "/no/such/dir/c.png"], "its directory does not exist"),
])
def test_bad_input_is_refused_with_exit_2(args: list[str], said: str) -> None:
    done = kit("run", *args)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
