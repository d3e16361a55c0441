"""tokens.dpop and a route's `dpop: required` (RFC 9449): defaults, limits, and how a rule knows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import GatewayConfig
from tests.unit.config.config_checks import problems_of, single


def test_dpop_defaults(make_config: Callable[..., GatewayConfig]) -> None:
    dpop = make_config().tokens.dpop
    assert (dpop.max_age, dpop.required, dpop.nonce) == (60.0, False, False)
    assert dpop.algorithms == ("ES256", "ES384", "EdDSA", "RS256", "PS256")


def test_dpop_settings_are_read(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(tokens={"dpop": {"max_age": "2m", "required": True, "algorithms": ["ES256", "EdDSA"]}})
    assert (cfg.tokens.dpop.max_age, cfg.tokens.dpop.required, cfg.tokens.dpop.algorithms) == (
        120.0, True, ("ES256", "EdDSA"))


@pytest.mark.parametrize(("dpop", "key"), [
    ({"algorithms": ["HS256"]}, "tokens.dpop.algorithms"),
    ({"algorithms": ["none"]}, "tokens.dpop.algorithms"),
    ({"algorithms": []}, "tokens.dpop.algorithms"),
    ({"max_age": "0s"}, "tokens.dpop.max_age"),
    ({"max_age": "1h"}, "tokens.dpop.max_age"),
    ({"nonce": "maybe"}, "tokens.dpop.nonce"),
    ({"requierd": True}, "tokens.dpop.requierd"),
])
def test_bad_dpop_settings_are_refused(write_config: Callable[..., Path], dpop: dict[str, Any], key: str) -> None:
    found = problems_of(write_config(tokens={"dpop": dpop}))
    assert key in {p.key.split("[")[0] for p in found}, found


def test_dpop_nonces_can_be_turned_on(make_config: Callable[..., GatewayConfig]) -> None:
    assert make_config(tokens={"dpop": {"nonce": True}}).tokens.dpop.nonce is True


def test_route_dpop_required_reaches_the_rule(make_config: Callable[..., GatewayConfig]) -> None:
    routes = [{"path": "/api/bound", "upstream": "orders", "dpop": "required"},
              {"path": "/api/any", "upstream": "orders"}]
    rules = make_config(routes=routes).rules
    assert rules.match("GET", "/api/bound/x").dpop_required is True
    assert rules.match("GET", "/api/any").dpop_required is False


@pytest.mark.parametrize("value", ["optional", True, "REQUIRED"])
def test_route_dpop_takes_only_required(write_config: Callable[..., Path], value: Any) -> None:
    found = single(problems_of(write_config(routes=[{"path": "/a", "upstream": "orders", "dpop": value}])))
    assert found.key == "routes[0].dpop"


def test_public_route_cannot_require_dpop(write_config: Callable[..., Path]) -> None:
    route = {"path": "/a", "upstream": "orders", "public": True, "dpop": "required"}
    assert single(problems_of(write_config(routes=[route]))).key == "routes[0].dpop"
