"""The upstreams and routes sections: upstream URLs and names, route paths, methods and roles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import GatewayConfig
from tests.unit.config.config_checks import DATA, SECRET_32, assert_single, line_in, problems_of, single, write_raw

__all__ = ["write_raw"]   # a fixture, imported for pytest


# --- upstreams and routes ----------------------------------------------------------------------

def test_route_naming_an_unknown_upstream(write_config: Callable[..., Path]) -> None:
    routes = [{"path": "/a", "upstream": "accounts"}, {"path": "/b", "upstream": "nowhere"}]
    assert_single(write_config(routes=routes), "routes[1].upstream", "nowhere")


def test_unknown_upstream_is_reported_with_other_mistakes(write_config: Callable[..., Path]) -> None:
    path = write_config(routes=[{"path": "/b", "upstream": "nowhere"}], tokens={"leeway": "soon"})
    assert sorted(p.key for p in problems_of(path)) == ["routes[0].upstream", "tokens.leeway"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "127.0.0.1:9001", "http://", "http://a.test/?q=1",
                                 "http://user:pw@a.test", "http://a.test:99999", "http://[::1"])
def test_bad_upstream_url(write_config: Callable[..., Path], url: str) -> None:
    path = write_config(upstreams={"accounts": {"url": url}})
    found = single(problems_of(path))
    assert (found.key, found.line) == ("upstreams.accounts.url", line_in(path, "  accounts:") + 1)


def test_at_least_one_upstream(write_raw: Callable[[str], Path]) -> None:
    minimal = DATA.joinpath("minimal.yaml").read_text()
    path = write_raw(minimal.replace("upstreams:\n  app: {url: http://127.0.0.1:9001}", "upstreams: {}"))
    problems = problems_of(path, {"TOKENGATE_SECRET": SECRET_32})
    assert [(p.key, p.line) for p in problems] == [("upstreams", line_in(path, "upstreams: {}")),
                                                   ("routes[0].upstream", line_in(path, "path: /"))]


@pytest.mark.parametrize("name", ["has space", "a/b"])
def test_bad_upstream_name(write_config: Callable[..., Path], name: str) -> None:
    path = write_config(upstreams={name: {"url": "http://x.test"}})
    assert_single(path, f"upstreams.{name}", f"{name}:")


@pytest.mark.parametrize("path", ["api", "/a*b", "/api/../x", "/api/./x", "/api/%2e%2e", "/api/%2F", "/api;x",
                                  "/a/..;/b", "/api?x=1", "/api#f", "/a b", "/a\\b", "/*x"])
def test_bad_route_path(write_config: Callable[..., Path], path: str) -> None:
    config = write_config(routes=[{"path": "/ok", "upstream": "accounts"}, {"path": path, "upstream": "accounts"}])
    found = single(problems_of(config))
    assert (found.key, found.line) == ("routes[1].path", line_in(config, "path: /ok") + 2)


@pytest.mark.parametrize("written, stored", [("/", "/"), ("/api/", "/api"), ("//api//x", "/api/x"),
                                             ("/api/*/x", "/api/*/x")])
def test_route_path_is_normalised(make_config: Callable[..., GatewayConfig], written: str, stored: str) -> None:
    cfg = make_config(routes=[{"path": written, "upstream": "accounts"}])
    assert cfg.routes[0].path == stored


def test_methods_are_upper_cased(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(routes=[{"path": "/a", "upstream": "accounts", "methods": ["get", "Post", "PURGE"]}])
    assert cfg.routes[0].methods == ("GET", "POST", "PURGE")


@pytest.mark.parametrize("methods", [[], ["GE T"], [""], ["GET", "get"], "GET", [1]])
def test_bad_methods(write_config: Callable[..., Path], methods: Any) -> None:
    path = write_config(routes=[{"path": "/a", "upstream": "accounts", "methods": methods}])
    assert single(problems_of(path)).key.startswith("routes[0].methods")


@pytest.mark.parametrize("route, key, below", [({"public": True, "roles": ["admin"]}, "routes[0].roles", 0),
                                               ({"roles": []}, "routes[0].roles", 0),
                                               ({"roles": [""]}, "routes[0].roles[0]", 1)])
def test_bad_roles(write_config: Callable[..., Path], route: dict[str, Any], key: str, below: int) -> None:
    path = write_config(routes=[{"path": "/a", "upstream": "accounts", **route}])
    found = single(problems_of(path))
    assert (found.key, found.line) == (key, line_in(path, "roles:") + below)
