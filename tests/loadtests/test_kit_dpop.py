"""The kit's DPoP mode: bound tokens with their client keys in the pool, a fresh proof a request that
the gateway's own checks accept, wrk refused for it, and a real `tokengate serve` answering every
DPoP kind as labelled (good proofs accepted, a wrong key and a replayed proof refused).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from gateway.config.load import load_config
from gateway.errors import InvalidDpopProof
from gateway.steps.dpop import check_binding, check_proof
from loadtests.drivers import DriverChoice, choose_for_pool
from loadtests.proofs import DPOP_KINDS, key_thumbprint, signer_for
from loadtests.tokenpool import PoolError, PoolMaker, generate, parse_mix, read_pool, write_pool
from tests.conftest import ISSUER
from tests.integration.gatewayproc import GatewayProcess
from tests.loadtests.conftest import config_path
from tests.loadtests.test_kit import kit

REPO = Path(__file__).resolve().parents[2]
MIX = "dpop=3,dpop_wrong_key=1,dpop_replay=1,valid=1"
KIT_TIMEOUT_S = 90.0


def _jkt(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["cnf"]["jkt"]


def _dpop_pool(cfg_path: Path, out: Path, count: int = 60) -> list[dict]:
    cfg = load_config(cfg_path)
    write_pool(generate(PoolMaker(cfg, "/api/orders", "user"), count, parse_mix(MIX), seed=3), out, ISSUER)
    return read_pool(out)


def _check(row: dict, url: str = "http://127.0.0.1:8080", now: float | None = None) -> None:
    signer = signer_for(row, url)
    assert signer is not None
    proof = check_proof(signer.proof(), method="GET", url=url + row["path"], now=now or time.time(),
                        max_age_s=60.0, algorithms=frozenset({"ES256"}), access_token=row["token"])
    check_binding(_jkt(row["token"]), proof)


def test_dpop_kinds_carry_what_the_driver_needs(write_config: Callable[..., Path], tmp_path: Path) -> None:
    rows = _dpop_pool(write_config(), tmp_path / "pool.jsonl")
    assert Counter(row["kind"] for row in rows) == {"dpop": 30, "dpop_wrong_key": 10, "dpop_replay": 10, "valid": 10}
    assert stat.S_IMODE(os.stat(tmp_path / "pool.jsonl").st_mode) == 0o600   # it holds private keys
    for row in rows:
        assert row["expect"] == (200 if row["kind"] in ("dpop", "valid") else 401)
        if row["kind"] == "dpop":
            assert _jkt(row["token"]) == key_thumbprint(row["dpop_key"]) and "d" in row["dpop_key"]
        elif row["kind"] == "dpop_wrong_key":
            assert _jkt(row["token"]) != key_thumbprint(row["dpop_key"])
        elif row["kind"] == "dpop_replay":
            assert "dpop_key" not in row and _jkt(row["token"])
        else:
            assert "dpop_key" not in row and "cnf" not in jwt.decode(row["token"], options={"verify_signature": False})
    assert len({key_thumbprint(row["dpop_key"]) for row in rows if row["kind"] == "dpop"}) == 30   # a key each


def test_each_proof_is_fresh_and_passes_the_gateways_checks(write_config: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    rows = _dpop_pool(write_config(), tmp_path / "pool.jsonl", count=12)
    good = next(row for row in rows if row["kind"] == "dpop")
    for _ in range(3):
        _check(good)
    signer = signer_for(good, "http://127.0.0.1:8080")
    assert signer is not None
    jtis = {jwt.decode(signer.proof(), options={"verify_signature": False})["jti"] for _ in range(100)}
    assert len(jtis) == 100
    wrong = next(row for row in rows if row["kind"] == "dpop_wrong_key")
    with pytest.raises(InvalidDpopProof, match="not the key the token is bound to"):
        _check(wrong)
    replay = next(row for row in rows if row["kind"] == "dpop_replay")
    assert signer_for(replay, "http://127.0.0.1:8080") is None


def test_proofs_name_the_public_url_when_the_config_has_one(write_config: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    path = write_config(auth={"public_url": "https://gw.example.test"})
    rows = _dpop_pool(path, tmp_path / "pool.jsonl", count=12)
    good = next(row for row in rows if row["kind"] == "dpop")
    assert good["htu"] == "https://gw.example.test/api/orders"
    _check(good, url="https://gw.example.test")


def test_replay_needs_dpop_in_the_mix(write_config: Callable[..., Path]) -> None:
    maker = PoolMaker(load_config(write_config()), "/api/orders", "user")
    with pytest.raises(PoolError, match="give dpop a weight"):
        generate(maker, 10, parse_mix("valid=1,dpop_replay=1"))
    assert set(DPOP_KINDS) <= set(parse_mix("dpop=1,dpop_wrong_key=1,dpop_replay=1"))


def test_wrk_is_refused_for_proofs_and_auto_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    pool = [{"kind": "valid"}, {"kind": "dpop"}]
    with pytest.raises(DriverChoice, match="cannot send DPoP proofs"):
        choose_for_pool("wrk", "wrk", pool)
    assert choose_for_pool("wrk", "auto", pool) == "asyncio"
    said = capsys.readouterr().err
    assert "cannot send DPoP proofs" in said and "using the asyncio driver" in said
    assert choose_for_pool("asyncio", "asyncio", pool) == "asyncio"
    assert choose_for_pool("wrk", "wrk", pool[:1]) == "wrk"   # Bearer only: wrk is fine


@pytest.mark.skipif(shutil.which("wrk") is None, reason="without wrk, --driver wrk is refused for that first")
def test_cli_refuses_wrk_for_a_dpop_pool_without_a_traceback(write_config: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    _dpop_pool(write_config(), tmp_path / "pool.jsonl", count=6)
    done = subprocess.run([sys.executable, "-m", "loadtests", "run", "--url", "http://127.0.0.1:1", "--pool",
                           str(tmp_path / "pool.jsonl"), "--driver", "wrk", "--duration", "1s"],
                          cwd=REPO, capture_output=True, text=True, timeout=KIT_TIMEOUT_S)
    assert done.returncode == 2 and "--driver wrk: wrk cannot send DPoP proofs" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.integration
async def test_dpop_run_against_a_real_gateway_is_all_correct(gateway: GatewayProcess, tmp_path: Path) -> None:
    pool, out = tmp_path / "pool.jsonl", tmp_path / "report.json"
    code, said, err = await kit("pool", "--config", config_path(gateway, tmp_path), "--out", str(pool),
                                "--count", "60", "--mix", MIX, "--seed", "5")
    assert code == 0, err
    assert "DPoP-bound tokens: 50" in said and "eyJ" not in said
    code, said, err = await kit("run", "--url", gateway.url, "--pool", str(pool), "--requests", "300",
                                "--concurrency", "8", "--json", str(out), "--no-progress")
    assert code == 0, said + err + gateway.log()
    data = json.loads(out.read_text())
    assert data["driver"] == "asyncio" and data["correct"] is True and data["errors"]["count"] == 0
    assert {kind: row["got"] for kind, row in data["tally"].items()} == {
        "dpop": {"200": 150}, "dpop_wrong_key": {"401": 50}, "dpop_replay": {"401": 50}, "valid": {"200": 50}}
    assert "RESULT: all correct" in said and "eyJ" not in said + err
    log = gateway.log()
    for row in read_pool(pool):   # neither a token nor a client key in the gateway's log
        assert row["token"] not in log and ("dpop_key" not in row or row["dpop_key"]["d"] not in said + log)


@pytest.mark.integration
def test_a_started_gateway_takes_the_dpop_pool(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config()
    _dpop_pool(config, tmp_path / "pool.jsonl", count=30)
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "-m", "loadtests", "run", "--start", "--config", str(config), "--pool",
                           str(tmp_path / "pool.jsonl"), "--requests", "120", "--concurrency", "4", "--json",
                           str(out), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=KIT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    rounds = json.loads(out.read_text())["targets"]["gateway, 1 worker"]
    assert rounds[0]["correct"] is True and rounds[0]["requests"] == 120 and rounds[0]["cpu_ms_per_1k"] > 0
    assert set(rounds[0]["tally"]) == {"dpop", "dpop_wrong_key", "dpop_replay", "valid"}


def test_the_benchmark_config_takes_the_kits_proofs(tmp_path: Path) -> None:
    from loadtests.benchconfig import SECRET_VAR, write_bench_config

    write_bench_config(tmp_path / "bench.yaml", 10)
    dpop = load_config(tmp_path / "bench.yaml", environ={SECRET_VAR: "s" * 48}).tokens.dpop
    assert "ES256" in dpop.algorithms and not dpop.nonce and dpop.max_age >= 10   # no nonces: the kit sends none
