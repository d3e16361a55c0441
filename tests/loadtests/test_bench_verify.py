"""The verification micro-benchmark on a tiny load: every column is printed and written, the cache
column is filled when gateway.steps.tokencache offers a usable cache and says n/a otherwise, bad arguments
exit 2, and no token is ever printed. No timing assertions: only that the figures exist."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from loadtests import bench_verify
from loadtests.bench_verify import CACHE_MODULE, COLUMNS, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--tokens", "3", "--repeat", "2", "--quiet"]
RATIOS = ("verifier_over_bare", "verifier_over_crypto", "decode_over_verifier")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main([*TINY, *args]) == 0
    out, err = capsys.readouterr()
    assert "eyJ" not in out + err   # a JWT's header segment starts with these three characters
    return out


def test_every_column_and_ratio_is_printed_and_written_for_each_algorithm(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = run(capsys, "--algs", "HS256,ES256,EdDSA", "--json", str(tmp_path / "bench.json"))
    head = next(line for line in out.splitlines() if line.startswith("alg"))
    assert head.split() == ["alg", *COLUMNS, "verifier/bare", "verifier/crypto", "decode/verifier"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["HS256"], ["ES256"],
                                                                                               ["EdDSA"])}
    assert set(rows) == {"HS256", "ES256", "EdDSA"}
    assert all(len(cells) == len(head.split()) for cells in rows.values())
    written = json.loads((tmp_path / "bench.json").read_text())
    assert (written["unit"], written["tokens"], written["repeats"]) == ("us_per_token", 3, 2)
    for result in written["results"]:
        figures = result["us_per_token"]
        assert set(figures) == set(COLUMNS)
        assert all(figures[c] > 0 for c in ("crypto", "bare", "decode", "verifier"))
        assert figures["cached"] is None or figures["cached"] > 0
        assert all(result[r] > 0 for r in RATIOS)


class FakeTokenCache:
    """A stand-in for gateway.steps.tokencache: a class with get(token, now) and put(token, identity)."""

    def __init__(self, max_entries: int, leeway_s: float) -> None:
        self.entries: dict[str, Any] = {}

    def get(self, token: str, now: float) -> Any:
        return self.entries.get(token)

    def put(self, token: str, identity: Any) -> None:
        self.entries[token] = identity


def test_cached_column_is_filled_when_the_token_cache_has_get_and_put(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = types.ModuleType(CACHE_MODULE)
    monkeypatch.setattr(FakeTokenCache, "__module__", CACHE_MODULE)
    module.FakeTokenCache = FakeTokenCache   # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, CACHE_MODULE, module)
    out = run(capsys, "--algs", "HS256", "--json", str(tmp_path / "bench.json"))
    result = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    assert result["us_per_token"]["cached"] > 0 and result["cached_by"] == f"{CACHE_MODULE}.FakeTokenCache"
    assert "cached: gateway.steps.tokencache.FakeTokenCache" in out


def test_cached_column_says_n_a_without_a_token_cache(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, CACHE_MODULE, None)   # import fails as if the module did not exist
    out = run(capsys, "--algs", "RS256", "--json", str(tmp_path / "bench.json"))
    row = next(line.split() for line in out.splitlines() if line.startswith("RS256"))
    assert row[1 + COLUMNS.index("cached")] == "n/a"
    result = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    assert result["us_per_token"]["cached"] is None and "does not exist" in result["cached_by"]


def test_a_verification_that_suspends_is_refused_not_mistimed() -> None:
    async def suspends() -> None:
        await types.coroutine(lambda: (yield))()

    with pytest.raises(RuntimeError, match="suspended"):
        bench_verify.drive(suspends())


@pytest.mark.parametrize("args", [["--algs", "none"], ["--algs", "HS999"], ["--tokens", "0"], ["--repeat", "x"],
                                  ["--max-seconds", "0"]], ids=lambda a: " ".join(a))
def test_bad_arguments_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2


def test_a_json_path_in_a_missing_directory_exits_2_before_measuring(tmp_path: Path) -> None:
    assert main([*TINY, "--json", str(tmp_path / "nowhere" / "bench.json")]) == 2


def test_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "loadtests.bench_verify", "--algs", "HS256", "--tokens", "2",
                           "--repeat", "1", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HS256" in done.stdout and "verifier/bare" in done.stdout
