"""Fuzzing load_config: no input, however broken, makes it raise anything but ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from gateway.config.load import ConfigError, GatewayConfig, load_config
from gateway.config.source import Problem
from tests.conftest import base_config
from tests.unit.config.config_checks import SECRET_32

_FUZZ_ENV = {"X": "value", "EMPTY": "", "SECRET": SECRET_32}


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "tokengate.yaml"


def _loads_or_config_error(path: Path) -> None:
    try:
        cfg = load_config(path, environ=_FUZZ_ENV)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, Problem) and isinstance(p.key, str) for p in exc.problems)
        assert str(exc)
    else:
        assert isinstance(cfg, GatewayConfig)


_YAMLISH = st.lists(st.sampled_from([
    "{", "}", "[", "]", ":", ": ", ",", ", ", "- ", "\n", "\n  ", "  ", "&a ", "*a", "<<: ", "!!int ", "!!str ",
    "!!timestamp ", "? ", "${X}", "${NOPE}", "${X:-d}", "${", "$$", "'", '"', "#", "|", ">", "tokens", "keys",
    "kid", "alg", "HS256", "ES256", "url", "routes", "upstreams", "path", "/api", "http://x?y={z}", "15m", "-1s",
    "---", "...", "%YAML 1.1\n", "\t", "\x85", "\u2028", "é", "0", "1.5", "null", "true", "2024-13-45",
]), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(_YAMLISH, st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)))
def test_fuzz_yamlish_text(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    _loads_or_config_error(fuzz_file)


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=200))
def test_fuzz_bytes(fuzz_file: Path, blob: bytes) -> None:
    fuzz_file.write_bytes(blob)
    _loads_or_config_error(fuzz_file)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found += _paths(value, (*prefix, key))
    return found


_ODD_STRINGS = st.sampled_from(["", " ", "15m", "0s", "-1s", "abc", "HS256", "none", "/", "/api/*", "a*b", "..",
                                "http://x", "ftp://x", "redis://:pw@h", "${X}", "${NOPE}", "$$", "${", "X-User-Id",
                                "Host", "5/min", "0/min", "store", "10.0.0.0/8", "::1", "{token}", "main", "rsa1",
                                "GET", "accounts", "\x00", "é" * 40, "9" * 400 + "d"])
_ODD_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), _ODD_STRINGS, st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(_ODD_STRINGS, st.text(max_size=8)), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_design_shaped_data(fuzz_file: Path, keys_dir: Path, data: st.DataObject) -> None:
    config = base_config(keys_dir)
    del config["tokens"]["keys"][1]   # loading an RSA key takes ~50 ms; the other keys exercise the same code
    config["auth"] = {"users": {"file": "u.yaml"}, "mail": {"from": "a@b.test"}, "rate_limits": {"login": "5/min"}}
    config["identity"] = {"headers": {"sub": "X-User-Id"}, "claims_header": "X-Claims"}
    config["store"] = {"url": "redis://:pw@127.0.0.1:6379/0"}
    config["tokens"]["trusted_issuers"] = [{"issuer": "https://idp.test", "jwks_uri": "https://idp.test/jwks"}]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(config)[1:]))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent[data.draw(_ODD_STRINGS)] = data.draw(_ODD_VALUES)
        else:
            parent[path[-1]] = data.draw(_ODD_VALUES)
    fuzz_file.write_text(yaml.safe_dump(config, default_flow_style=data.draw(st.sampled_from([None, False, True]))))
    _loads_or_config_error(fuzz_file)
