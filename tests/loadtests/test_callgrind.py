"""`python -m loadtests.callgrind` on a tiny load: both targets run under valgrind, are loaded by wrk,
and come back as instructions per request (never judged: speed is the kit's report, not a test's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.config.load import load_config
from loadtests import callgrind
from loadtests.benchconfig import SECRET_VAR, write_bench_config
from loadtests.tokenpool import PoolMaker, generate, parse_mix, write_pool


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv(SECRET_VAR, "s" * 48)
    config = tmp_path / "bench.yaml"
    write_bench_config(config, 20, workers=1, lean=True)
    cfg = load_config(config)
    pool = tmp_path / "pool.jsonl"
    write_pool(generate(PoolMaker(cfg, "/api/orders", "user"), 20, parse_mix("valid=1")), pool, cfg.tokens.issuer)
    return config, pool


@pytest.mark.integration
@pytest.mark.skipif(not all(shutil.which(t) for t in ("valgrind", "callgrind_control", "wrk")),
                    reason="needs valgrind and wrk (./dev.sh installs both)")
def test_both_targets_are_counted(bench: tuple[Path, Path], tmp_path: Path) -> None:
    config, pool = bench
    out = tmp_path / "cg.json"
    assert callgrind.main(["--config", str(config), "--pool", str(pool), "--seconds", "1", "--warm", "1",
                           "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for target in ("plain_proxy", "gateway"):
        assert data[target]["requests"] > 0 and data[target]["instructions"] > 0
        assert data[target]["per_request"] == round(data[target]["instructions"] / data[target]["requests"])
    assert data["ratio"] == pytest.approx(data["gateway"]["per_request"] / data["plain_proxy"]["per_request"])
    assert not list(config.parent.glob(".loadtest-callgrind-*"))   # the config copy is gone


def test_a_missing_tool_is_named(bench: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config, pool = bench
    assert callgrind.main(["--config", str(config), "--pool", str(pool)]) == 2
    assert "valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)" in capsys.readouterr().err


def test_the_totals_of_every_dump_add_up(tmp_path: Path) -> None:
    for name, total in (("t.callgrind", 0), ("t.callgrind.1", 1200), ("t.callgrind.2", 34)):
        (tmp_path / name).write_text(f"events: Ir\nsummary: {total}\nfn=x\n1 {total}\ntotals: {total}\n")
    (tmp_path / "other.callgrind").write_text("totals: 99\n")
    assert callgrind.instructions(tmp_path / "t.callgrind") == 1234


def _dpop_pool(config: Path, tmp_path: Path) -> Path:
    cfg = load_config(config)
    pool = tmp_path / "dpop.jsonl"
    write_pool(generate(PoolMaker(cfg, "/api/orders", "user"), 10, parse_mix("dpop=1")), pool, cfg.tokens.issuer)
    return pool


def test_a_dpop_pool_needs_the_asyncio_driver(bench: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    config, _ = bench
    assert callgrind.main(["--config", str(config), "--pool", str(_dpop_pool(config, tmp_path))]) == 2
    assert "cannot send DPoP proofs" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.skipif(not all(shutil.which(t) for t in ("valgrind", "callgrind_control")),
                    reason="needs valgrind (./dev.sh installs it)")
def test_a_dpop_pool_is_counted_with_the_asyncio_driver(bench: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = bench
    out = tmp_path / "cg.json"
    assert callgrind.main(["--config", str(config), "--pool", str(_dpop_pool(config, tmp_path)), "--driver",
                           "asyncio", "--seconds", "1", "--warm", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["gateway"]["requests"] > 0 and data["gateway"]["per_request"] > 0
