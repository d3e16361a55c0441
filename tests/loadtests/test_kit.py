"""The load-testing kit end to end on a tiny load: pool labels are true, the driver and report
against a real `tokengate serve` tally every answer, a wrong expectation exits 1, remote targets
are refused, and the percentile arithmetic is right.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.config.load import load_config
from loadtests.chart import per_second, render_png
from loadtests.driver import ERROR, RemoteTarget, Results, check_target
from loadtests.report import build, percentile, text
from loadtests.tokenpool import (BEARER_KINDS, OTHER_AUDIENCE, PoolError, PoolMaker, generate, parse_mix, read_jsonl,
                                 sidecar_path, split_count, write_pool)
from tests.conftest import AUDIENCE, HS_SECRET, ISSUER
from tests.integration.gatewayproc import GatewayProcess
from tests.integration.server.test_access_log import written_access_lines
from tests.loadtests.conftest import config_path as _config_path
from tests.loadtests.reportchecks import assert_has_a_curve_and_a_rate, assert_is_a_chart

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


async def kit(*args: str) -> tuple[int, str, str]:
    """Run `python -m loadtests ARGS` without blocking the loop (the echo upstream lives on it)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loadtests", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _header(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _verify(token: str) -> dict[str, Any]:
    return jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)


def test_mix_counts_add_up() -> None:
    assert split_count(7, {"valid": 1, "expired": 1}) in ({"valid": 4, "expired": 3}, {"valid": 3, "expired": 4})
    assert sum(split_count(10_000, parse_mix("valid=70,expired=5,revoked=25")).values()) == 10_000
    with pytest.raises(PoolError):
        parse_mix("valid=70,sneaky=5")


def test_every_kind_is_what_it_says(write_config: Callable[..., Path], tmp_path: Path) -> None:
    cfg = load_config(write_config())
    entries = generate(PoolMaker(cfg, "/api/orders", "user"), 140, parse_mix("valid=1,expired=1,revoked=1,"
                       "bad_signature=1,wrong_audience=1,unknown_kid=1,wrong_role=1"), seed=1)
    assert Counter(e.kind for e in entries) == {kind: 20 for kind in BEARER_KINDS}
    kids = {key.kid for key in cfg.tokens.keys}
    for e in entries:
        assert e.path == "/api/orders"
        assert e.expect == {"valid": 200, "wrong_role": 403}.get(e.kind, 401)
        claims = _claims(e.token)
        if e.kind in ("valid", "revoked"):
            assert _verify(e.token)["roles"] == ["user"]
        elif e.kind == "expired":
            assert claims["exp"] + cfg.tokens.leeway < time.time()
            assert _header(e.token)["kid"] == "main"
        elif e.kind == "wrong_audience":
            assert claims["aud"] == OTHER_AUDIENCE
            with pytest.raises(jwt.InvalidAudienceError):
                _verify(e.token)
        elif e.kind == "unknown_kid":
            assert _header(e.token)["kid"] not in kids
        elif e.kind == "bad_signature":
            assert _header(e.token)["kid"] == "main"
            with pytest.raises(jwt.InvalidSignatureError):
                _verify(e.token)
        elif e.kind == "wrong_role":
            assert "user" not in _verify(e.token)["roles"] and "admin" not in _verify(e.token)["roles"]
    side = write_pool(entries, tmp_path / "pool.jsonl", ISSUER)
    revoked = read_jsonl(side)
    assert side == sidecar_path(tmp_path / "pool.jsonl") == tmp_path / "pool.revoke.jsonl"
    assert {r["jti"] for r in revoked} == {e.jti for e in entries if e.kind == "revoked"}
    assert all(r["iss"] == ISSUER for r in revoked)


def test_pool_refuses_a_public_path_and_a_role_the_route_does_not_take(write_config: Callable[..., Path]) -> None:
    cfg = load_config(write_config())
    with pytest.raises(PoolError, match="public"):
        PoolMaker(cfg, "/api/public", "user")
    with pytest.raises(PoolError, match="roles"):
        PoolMaker(cfg, "/api/admin", "user")


def test_percentile_on_known_data() -> None:
    data = [float(i) for i in range(1, 101)]
    assert [percentile(data, p) for p in (50, 90, 99, 99.9, 100)] == [50.0, 90.0, 99.0, 100.0, 100.0]
    data = [float(i) for i in range(1, 1001)]
    assert percentile(data, 99.9) == 999.0
    assert percentile([7.0], 50) == 7.0 and percentile([], 50) is None


def _fake_results() -> Results:
    results = Results(kinds=["valid", "expired"], elapsed_s=2.0)
    for i in range(10):
        results.add(i * 0.2, 1.0 + i, 200 if i % 2 == 0 else 401, i % 2)
    results.add(1.9, 5.0, ERROR, 0)
    results.error_types["ClientConnectorError"] = 1
    return results


def test_report_tallies_mismatches_and_errors() -> None:
    data = build(_fake_results(), [200, 401], "http://127.0.0.1:1")
    assert data["tally"]["valid"] == {"expected": [200], "got": {"200": 5, "error": 1}, "requests": 6, "correct": 5}
    assert data["mismatches"] == [{"kind": "valid", "expected": 200, "got": "error", "count": 1}]
    assert data["correct"] is False and data["throughput_per_s"] == [5, 6]
    assert "MISMATCH valid" in text(data)


def test_report_keeps_the_latency_curve() -> None:
    data = build(_fake_results(), [200, 401], "http://127.0.0.1:1")
    assert_has_a_curve_and_a_rate(data)
    assert dict(map(tuple, data["latency_curve_ms"]))[50] == 5.0   # nearest rank of 1..10 ms and 5 ms


def test_chart_scales_a_short_last_second_and_leaves_out_a_sliver() -> None:
    assert per_second([5, 6, 3], 2.3) == ([0.0, 1, 2, 2.3], [5.0, 6.0, pytest.approx(10.0)])
    assert per_second([5, 6, 1], 2.004) == ([0.0, 1, 2.0], [5.0, 6.0])
    assert per_second([50], 0.25) == ([0.0, 0.25], [200.0])
    assert per_second([5, 6, 7], 3.01) == ([0.0, 1, 2, 3.0], [5.0, 6.0, 7.0])


def test_png_chart_draws_one_line_per_report(tmp_path: Path) -> None:
    data = build(_fake_results(), [200, 401], "http://127.0.0.1:1")
    assert render_png([("a", data), ("b", data)], tmp_path / "c.png", "two runs") is None
    assert_is_a_chart(tmp_path / "c.png")


@pytest.mark.parametrize("url", ["http://10.1.2.3:8080", "http://example.com", "http://[2001:db8::1]/"])
def test_remote_target_refused(url: str) -> None:
    with pytest.raises(RemoteTarget, match="--allow-remote"):
        check_target(url)
    assert check_target(url, allow_remote=True) == url.rstrip("/")
    for local in ("http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1", "http://[::1]:80"):
        assert check_target(local) == local


async def test_cli_refuses_a_remote_target(tmp_path: Path) -> None:
    code, out, err = await kit("run", "--url", "http://10.1.2.3:8080", "--pool", str(tmp_path / "none.jsonl"),
                               "--requests", "1")
    assert code == 2 and "--allow-remote" in err and out == ""


@pytest.mark.integration
async def test_kit_against_a_real_gateway(gateway: GatewayProcess, tmp_path: Path) -> None:
    pool, out, png = tmp_path / "pool.jsonl", tmp_path / "report.json", tmp_path / "report.png"
    code, said, _ = await kit("pool", "--config", _config_path(gateway, tmp_path), "--out", str(pool),
                              "--count", "200", "--seed", "7")
    assert code == 0 and "wrote 200 tokens" in said and "eyJ" not in said
    code, said, err = await kit("revoke", "--pool", str(pool), "--admin", gateway.admin_url)
    assert code == 0, err
    assert "revoked 10 of 10" in said
    code, said, err = await kit("run", "--url", gateway.url, "--pool", str(pool), "--requests", "400",
                                "--concurrency", "8", "--json", str(out), "--png", str(png), "--no-progress")
    assert code == 0, said + err + gateway.log()
    data = json.loads(out.read_text())
    assert data["requests"] == 400 and data["correct"] is True and data["mismatches"] == []
    assert_has_a_curve_and_a_rate(data)
    assert sum(data["throughput_per_s"]) == 400
    assert_is_a_chart(png)
    assert data["errors"]["count"] == 0 and data["status"] == {"200": 280, "401": 100, "403": 20}
    assert set(data["tally"]) == {"valid", "expired", "revoked", "bad_signature", "wrong_audience",
                                  "unknown_kid", "wrong_role"}
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p99"] <= data["latency_ms"]["max"]
    assert "RESULT: all correct" in said and "eyJ" not in said
    await written_access_lines(gateway, 400)   # the gateway's access log has a line a request ...
    log = gateway.log()
    for row in map(json.loads, pool.read_text().splitlines()):   # ... and no token of the pool
        assert row["token"] not in log and row["token"].split(".")[2] not in log


@pytest.mark.integration
async def test_a_wrong_expectation_fails_the_run(gateway: GatewayProcess, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    code, _, err = await kit("pool", "--config", _config_path(gateway, tmp_path), "--out", str(pool),
                             "--count", "20", "--mix", "valid=1,expired=1")
    assert code == 0, err
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    for row in rows:
        if row["kind"] == "expired":
            row["expect"] = 200   # wrong on purpose: the gateway refuses expired tokens with 401
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, said, err = await kit("run", "--url", gateway.url, "--pool", str(pool), "--requests", "40",
                                "--concurrency", "4", "--no-progress")
    assert code == 1, said + err
    assert "MISMATCH expired: expected 200, got 401 x20" in said
    assert "RESULT: NOT correct" in said


def test_the_kit_finds_the_admin_token_in_the_config_or_the_environment(
        make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtests.revocation import ADMIN_TOKEN_VAR, admin_token

    monkeypatch.delenv(ADMIN_TOKEN_VAR, raising=False)
    assert admin_token(make_config()) is None and admin_token(None) is None
    assert admin_token(make_config(admin={"token": "t" * 40})) == "t" * 40
    monkeypatch.setenv(ADMIN_TOKEN_VAR, "e" * 40)
    assert admin_token(None) == "e" * 40


@pytest.mark.parametrize("lean", [False, True])
def test_the_benchmark_config_loads_with_its_routes_and_switches(tmp_path: Path, lean: bool) -> None:
    from loadtests.benchconfig import SECRET_VAR, write_bench_config

    path = tmp_path / "bench.yaml"
    write_bench_config(path, 1000, workers=2, lean=lean)
    cfg = load_config(path, environ={SECRET_VAR: "s" * 48})
    assert len(cfg.routes) == 1000 and cfg.listen.workers == 2 and cfg.store.url == "memory://"
    assert (cfg.log.access, cfg.admin.metrics) == (not lean, not lean)
    assert PoolMaker(cfg, "/api/orders", "user").rule.roles == frozenset({"user", "admin"})
