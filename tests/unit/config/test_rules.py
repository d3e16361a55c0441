"""RuleSet: most specific route wins, methods only within one pattern, default deny, conflicts at load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import ConfigError, RouteConfig, load_config
from gateway.config.rules import Rule, RuleConflict, RuleSet, _Node
from gateway.config.source import read_source
from gateway.errors import BadPath, NoRoute
from gateway.paths import normalise


def route(path: str, *methods: str, upstream: str = "up", **extra: Any) -> RouteConfig:
    return RouteConfig(path=path, upstream=upstream, methods=list(methods) or None, **extra)


def index_of(rules: RuleSet, method: str, path: str) -> int | None:
    try:
        return rules.match(method, path).index
    except NoRoute:
        return None


class CountingRuleSet(RuleSet):
    """Counts trie nodes visited, to show what a match costs without timing it."""

    visits = 0

    def _walk(self, node: _Node, segments: list[str], depth: int) -> _Node | None:
        self.visits += 1
        return super()._walk(node, segments, depth)


@pytest.fixture
def design_rules() -> RuleSet:
    """The routes of DESIGN.md, in its order."""
    return RuleSet.compile([
        route("/api/public", upstream="accounts", public=True),
        route("/api/admin", upstream="accounts", roles=["admin"]),
        route("/api/orders", "GET", upstream="orders", roles=["user", "admin"]),
        route("/api/orders", "POST", "DELETE", upstream="orders", roles=["admin"]),
        route("/api/accounts/*/profile", upstream="accounts"),
    ])


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/api/public", 0),
    ("POST", "/api/public/x/y", 0),
    ("GET", "/api/publicity", None),
    ("GET", "/api/admin", 1),
    ("GET", "/api/admin/", 1),
    ("DELETE", "/api/admin/users/7", 1),
    ("GET", "/api/administrator", None),
    ("GET", "/API/admin", None),
    ("GET", "/api/Admin", None),
    ("GET", "/api/orders", 2),
    ("GET", "/api/orders/7", 2),
    ("POST", "/api/orders", 3),
    ("DELETE", "/api/orders/7", 3),
    ("PUT", "/api/orders", None),
    ("get", "/api/orders", None),
    ("GET", "/api/accounts/42/profile", 4),
    ("GET", "/api/accounts/42/profile/", 4),
    ("GET", "/api/accounts/42/profile/photo", 4),
    ("GET", "/api/accounts/profile", None),
    ("GET", "/api/accounts/1/2/profile", None),
    ("GET", "/api/accounts/42", None),
    ("GET", "/api", None),
    ("GET", "/", None),
])
def test_design_routes_match_as_documented(design_rules: RuleSet, method: str, path: str,
                                           expected: int | None) -> None:
    assert index_of(design_rules, method, path) == expected


def test_unmatched_request_raises_no_route_404(design_rules: RuleSet) -> None:
    with pytest.raises(NoRoute) as info:
        design_rules.match("GET", "/nowhere")
    assert (info.value.status, info.value.code) == (404, "no_route")


@pytest.mark.parametrize(("raw", "expected"), [
    ("/api/public/../admin", 1),
    ("/api/public/%2e%2e/admin", 1),
    ("/api/public/.%2E/admin", 1),
    ("/api/public//../admin", 1),
    ("/api//admin", 1),
    ("/%61pi/admin", 1),
])
def test_dot_segments_resolve_before_matching_so_public_never_covers_admin(
        design_rules: RuleSet, raw: str, expected: int) -> None:
    assert design_rules.match("GET", normalise(raw)).index == expected


@pytest.mark.parametrize("raw", ["/api/public/..;/admin", "/api/admin;x", "/api/public%2f..%2fadmin",
                                 "/api/public/..%5cadmin", "/api/../../admin"])
def test_bypass_forms_never_reach_matching(raw: str) -> None:
    with pytest.raises(BadPath):
        normalise(raw)


@pytest.mark.parametrize(("patterns", "path", "winner"), [
    (["/a/b", "/a/b/*"], "/a/b/x", "/a/b/*"),
    (["/a/b", "/a/b/*"], "/a/b", "/a/b"),
    (["/a/b", "/a/b/*"], "/a/b/", "/a/b"),
    (["/a/b", "/a/*/c/d"], "/a/b/c/d", "/a/b"),
    (["/a/b", "/a/*/c/d"], "/a/z/c/d", "/a/*/c/d"),
    (["/a/*", "/a/x"], "/a/x", "/a/x"),
    (["/a/*", "/a/x"], "/a/y", "/a/*"),
    (["/a/*/c", "/a/x/*"], "/a/x/c", "/a/x/*"),
    (["/", "/a"], "/a/b", "/a"),
    (["/", "/a"], "/b", "/"),
    (["/", "/a"], "/", "/"),
    (["/*", "/a/b/c"], "/a/b", "/*"),
    (["/a/b/c", "/a/*/d"], "/a/b/d", "/a/*/d"),       # backtracks from the literal branch to `*`
    (["/a", "/a/b/c"], "/a/b/x", "/a"),                 # backtracks to the pattern that ended
    (["/a/*/*", "/a/*"], "/a/x/y", "/a/*/*"),
])
def test_most_specific_pattern_wins_in_any_file_order(patterns: list[str], path: str, winner: str) -> None:
    for ordered in (patterns, patterns[::-1]):
        assert RuleSet.compile([route(p) for p in ordered]).match("GET", path).path == winner


@pytest.mark.parametrize("path", ["/a//x", "/a/", "/a"])
def test_wildcard_needs_exactly_one_nonempty_segment(path: str) -> None:
    rules = RuleSet.compile([route("/a/*/x")])
    with pytest.raises(NoRoute):
        rules.match("GET", path)


@pytest.mark.parametrize("routes", [
    [route("/api/x", roles=["user"]), route("/api/x", "GET", public=True)],
    [route("/api/x", "GET", public=True), route("/api/x", roles=["user"])],
    [route("/api/x", "POST"), route("/b"), route("/api/x/", "GET", public=True), route("/api//x", roles=["u"])],
])
def test_route_without_methods_cannot_share_its_path_with_a_route_listing_some(routes: list[RouteConfig]) -> None:
    with pytest.raises(RuleConflict) as info:   # which one should GET get? The file must say it once.
        RuleSet.compile(routes)
    assert (info.value.first, info.value.second) == (0, len(routes) - 1)
    assert "GET" in info.value.reason or "POST" in info.value.reason


def test_less_specific_route_never_picks_up_a_method_the_specific_route_omits() -> None:
    rules = RuleSet.compile([route("/api", public=True), route("/api/orders", "GET", roles=["admin"])])
    with pytest.raises(NoRoute):
        rules.match("POST", "/api/orders")
    assert rules.match("POST", "/api/other").index == 0
    explanation = rules.explain("POST", "/api/orders")
    assert explanation.rule is None and "routes[1]" in explanation.reason


def test_route_written_with_special_characters_matches_its_canonical_path() -> None:
    rules = RuleSet.compile([route("/", public=True), route("/users/@me", roles=["user"]),
                             route("/a|b", roles=["admin"]), route("/caf\u00e9", roles=["admin"])])
    assert rules.match("GET", normalise("/users/%40me")).index == 1
    assert rules.match("GET", normalise("/a%7cb")).index == 2
    assert rules.match("GET", normalise("/a|b")).index == 2
    assert rules.match("GET", normalise("/caf%c3%a9/x")).index == 3


def test_rule_carries_route_settings() -> None:
    rules = RuleSet.compile([route("/api/orders", "GET", "POST", upstream="orders", roles=["user", "admin"],
                                   name="orders")])
    assert rules.match("POST", "/api/orders") == Rule(
        index=0, path="/api/orders", methods=frozenset({"GET", "POST"}), upstream="orders", public=False,
        roles=frozenset({"user", "admin"}), label="orders")
    assert len(rules) == 1


@pytest.mark.parametrize(("routes", "first", "second"), [
    ([route("/a"), route("/a")], 0, 1),
    ([route("/a/*", public=True), route("/b"), route("/a/*/", roles=["x"])], 0, 2),
    ([route("/a", "GET", "POST"), route("/b"), route("/c"), route("/a", "DELETE", "POST")], 0, 3),
    ([route("/a", "GET"), route("/a", "PUT"), route("/a", "PUT", "GET")], 0, 2),
    ([route("/a", "GET"), route("/a", "PUT"), route("/a")], 0, 2),
    ([route("/a/*/c", "PATCH"), route("/a/*/c/", "patch")], 0, 1),
])
def test_conflicting_routes_are_refused_naming_both(routes: list[RouteConfig], first: int,
                                                    second: int) -> None:
    with pytest.raises(RuleConflict) as info:
        RuleSet.compile(routes)
    assert (info.value.first, info.value.second) == (first, second)


def test_same_pattern_with_disjoint_methods_is_no_conflict() -> None:
    rules = RuleSet.compile([route("/a", "GET"), route("/a", "POST"), route("/a/*"), route("/a/b"), route("/")])
    assert len(rules) == 5
    assert (index_of(rules, "GET", "/a/x/y"), index_of(rules, "POST", "/a")) == (2, 1)
    assert index_of(rules, "PUT", "/a") is None


def test_route_without_methods_on_a_less_specific_path_is_no_conflict() -> None:
    rules = RuleSet.compile([route("/api", roles=["user"]), route("/api/x", "GET", public=True)])
    assert (index_of(rules, "GET", "/api/x"), index_of(rules, "GET", "/api/y")) == (1, 0)


@pytest.mark.parametrize("routes", [
    [{"path": "/api/x", "upstream": "orders"}, {"path": "/api/y", "upstream": "orders"},
     {"path": "/api/x/", "upstream": "accounts"}],
    # a route without methods beside one that lists GET (and makes it public) on the same path
    [{"path": "/api/x", "upstream": "orders", "roles": ["user"]}, {"path": "/api/y", "upstream": "orders"},
     {"path": "/api/x", "methods": ["GET"], "upstream": "orders", "public": True}],
], ids=["same-path", "all-methods-beside-get"])
def test_conflict_in_config_file_names_both_routes_file_and_line(write_config: Callable[..., Path],
                                                                routes: list[dict[str, object]]) -> None:
    path = write_config(routes=routes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    src = read_source(path)
    assert (problem.key, problem.line) == ("routes[2]", src.line_of(("routes", 2)))
    assert f"{path}:{src.line_of(('routes', 0))}" in problem.message


def test_explain_lists_every_route_of_the_most_specific_pattern(design_rules: RuleSet) -> None:
    assert [r.index for r in design_rules.explain("GET", "/api/orders/7").routes] == [2, 3]
    assert [r.index for r in design_rules.explain("PUT", "/api/orders").routes] == [2, 3]
    assert [r.index for r in design_rules.explain("GET", "/api/admin").routes] == [1]
    assert design_rules.explain("GET", "/nowhere").routes == ()


@pytest.mark.parametrize(("method", "path", "index", "normal"), [
    ("GET", "/api/public/../orders/7", 2, "/api/orders/7"),       # a route with roles
    ("GET", "/api//public/./x", 0, "/api/public/x"),                # a public one
    ("GET", "/api/accounts/7/../8/profile", 4, "/api/accounts/8/profile"),   # one for any caller
    ("PUT", "/api//orders", None, "/api/orders"),                   # its pattern has no route for PUT
    ("GET", "/nowhere/./", None, "/nowhere/"),                      # no pattern at all
    ("GET", "/api/..;/admin", None, "/api/..;/admin"),              # refused with 400: the path as given
])
def test_explain_gives_the_rule_or_none_with_the_normalised_path(design_rules: RuleSet, method: str, path: str,
                                                                 index: int | None, normal: str) -> None:
    found = design_rules.explain(method, path)
    assert (found.rule.index if found.rule is not None else None, found.path) == (index, normal)
    assert found.reason   # (its wording is for people; `tokengate explain` prints it)


def many_routes(count: int) -> list[RouteConfig]:
    routes = [route("/", public=True)]
    for i in range((count + 3) // 4):
        routes += [route(f"/svc{i}"), route(f"/svc{i}/items", "GET"), route(f"/svc{i}/items/*/detail"),
                   route(f"/svc{i}/*/admin", roles=["admin"])]
    return routes[:count]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/svc1/items/9/detail"), ("GET", "/svc1/items"), ("POST", "/svc1/items/x"),
    ("GET", "/svc0/x/admin/y"), ("GET", "/nosuch/a/b/c/d/e"), ("GET", "/svc1/items/9/other/z/z/z"),
])
def test_match_cost_does_not_grow_with_route_count(method: str, path: str) -> None:
    small, large = CountingRuleSet.compile(many_routes(10)), CountingRuleSet.compile(many_routes(1000))
    assert (len(small), len(large)) == (10, 1000)
    results = []
    for rules in (small, large):
        try:
            results.append(rules.match(method, path).path)
        except NoRoute:
            results.append(None)
    assert results[0] == results[1]
    assert 0 < small.visits == large.visits   # 0 would mean match() no longer goes through _walk: count again
    depth = len(path.strip("/").split("/"))
    assert large.visits <= 2 * (depth + 1)
