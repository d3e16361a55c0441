"""`python -m loadtests.opsbench` end to end on a tiny load: it starts the kit's stack with two
workers, loads it quietly, with reloads and with a worker killed, and reports what each cost.
Nothing here asserts how fast anything is: only that every figure was measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_opsbench_measures_reloads_and_a_dead_worker(write_config: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, "-m", "loadtests.opsbench", "--config", str(write_config()),
                           "--workers", "2", "--rate", "50/s", "--duration", "2s", "--reload-every", "0.5s",
                           "--kills", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["quiet"]["requests"] > 50 and data["quiet"]["errors"] == 0
    reloads = data["reloads"]
    assert reloads["signals"] >= 2 and reloads["applied"] >= 2 * 2   # each signal reaches both workers
    assert reloads["apply_ms"]["max"] > 0 and reloads["read_ms"] > 0 and reloads["p99_vs_quiet"] > 0
    assert reloads["signal_to_all_applied_s"] is not None
    (kill_to_serving,) = data["kills"]["kill_to_serving_s"]
    assert kill_to_serving is not None and kill_to_serving > 0
    assert "eyJ" not in done.stdout + done.stderr   # no token is ever printed
