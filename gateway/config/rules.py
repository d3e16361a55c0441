"""Step 1: method + normalised path -> Rule, or NoRoute (404). Routes are compiled once into a trie.

A request visits only trie nodes whose pattern prefix matches its path, so the cost depends on the
path depth and the shape of the patterns, never on how many routes the file holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import BadPath, NoRoute
from ..paths import normalise, quote_segment
from .routes import RouteConfig

WILDCARD = "*"
SLICE_ROUTES = 100   # compile_in_slices: routes compiled between two turns of the event loop


class RuleConflict(Exception):
    """Two routes that cannot both be kept: ``first`` < ``second`` index the routes list."""

    def __init__(self, first: int, second: int, reason: str) -> None:
        self.first, self.second, self.reason = first, second, reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    path: str                        # the pattern, as configured
    methods: frozenset[str] | None   # None: every method
    upstream: str
    public: bool
    roles: frozenset[str] | None     # None: any authenticated caller
    label: str
    dpop_required: bool = False      # route `dpop: required`: unbound tokens are refused here

    @classmethod
    def from_route(cls, index: int, route: RouteConfig) -> Rule:
        return cls(index=index, path=route.path, upstream=route.upstream, public=route.public,
                   methods=frozenset(route.methods) if route.methods is not None else None,
                   roles=frozenset(route.roles) if route.roles is not None else None, label=route.label,
                   dpop_required=route.dpop == "required")

    def describe(self) -> str:
        named = "" if self.label.endswith(f" {self.path}") else f" ({self.label})"   # label is the name if set
        return f"routes[{self.index}] `{self.path}`{named}"

    def needs(self) -> str:
        if self.public:
            return "it is public, no token is needed"
        if self.roles is None:
            return "it needs a valid token, any authenticated caller passes"
        return f"it needs a valid token with one of the roles: {', '.join(sorted(self.roles))}"


@dataclass(frozen=True, slots=True)
class Explanation:
    rule: Rule | None
    reason: str      # one sentence, for people: which route matched and what it needs, or why none did
    path: str        # the normalised path the decision was made on (as given when it was refused)
    routes: tuple[Rule, ...] = ()   # every route of the most specific matching pattern, in file order


class _Node:
    """One pattern prefix. ``by_method``/``any_method`` hold the routes whose pattern ends here."""

    __slots__ = ("children", "wildcard", "by_method", "any_method")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.wildcard: _Node | None = None
        self.by_method: dict[str, Rule] = {}
        self.any_method: Rule | None = None

    @property
    def is_end(self) -> bool:
        return self.any_method is not None or bool(self.by_method)

    def child(self, segment: str) -> _Node:
        if segment == WILDCARD:
            if self.wildcard is None:
                self.wildcard = _Node()
            return self.wildcard
        return self.children.setdefault(segment, _Node())

    def add(self, rule: Rule) -> None:
        """Attach ``rule`` (pattern ends here); raises RuleConflict if its methods overlap those of a
        route already here. A route without `methods` covers every method, so it overlaps any other
        route of its pattern: the file would say two things about one method, and whichever won, the
        other route's settings (`public: true` among them) would silently apply to it."""
        for other in self.rules():   # in file order: the conflict names the earliest overlapping route
            if (reason := _overlap(other, rule)) is not None:
                raise RuleConflict(other.index, rule.index, reason)
        if rule.methods is None:
            self.any_method = rule
            return
        for method in rule.methods:
            self.by_method[method] = rule

    def select(self, method: str) -> Rule | None:
        """The route of this exact pattern for ``method``: one that lists it, else one for every method."""
        rule = self.by_method.get(method)
        return rule if rule is not None else self.any_method

    def rules(self) -> list[Rule]:
        found = {r.index: r for r in self.by_method.values()}
        if self.any_method is not None:
            found[self.any_method.index] = self.any_method
        return [found[i] for i in sorted(found)]


def _overlap(first: Rule, second: Rule) -> str | None:
    """Why two routes of one pattern cannot both be kept, or None when their methods are disjoint."""
    if first.methods is None and second.methods is None:
        return (f"duplicate route: another route has the same path `{second.path}` and both allow every "
                "method; give them distinct `methods` or merge them")
    if first.methods is None or second.methods is None:
        listed = sorted(first.methods or second.methods or ())
        return (f"ambiguous route: another route has the same path `{second.path}`; the one without "
                f"`methods` covers every method, {', '.join(listed)} included, which the other also "
                "lists; give each route its own `methods` (lists that share no method) or merge them")
    clashes = sorted(first.methods & second.methods)
    if clashes:
        return (f"ambiguous route: another route has the same path `{second.path}` and also lists "
                f"{', '.join(clashes)}; each method may appear in one of them only")
    return None


def _grow(root: _Node, routes: Sequence[RouteConfig]) -> Iterator[int]:
    """Add each route to the trie under ``root``; yields how many are in after each one."""
    for index, route in enumerate(routes):
        node = root
        for segment in _segments(route.path):
            node = node.child(segment if segment == WILDCARD else quote_segment(segment))
        node.add(Rule.from_route(index, route))
        yield index + 1


def _segments(path: str) -> list[str]:
    # Empty segments are dropped: a trailing slash stays under its route and `*` never matches "".
    return [s for s in path.split("/") if s]


class RuleSet:
    """The compiled routes. ``match`` is the per-request call; ``explain`` serves `tokengate explain`."""

    def __init__(self, root: _Node, count: int) -> None:
        self._root = root
        self._count = count

    @classmethod
    def compile(cls, routes: Sequence[RouteConfig]) -> RuleSet:
        """Build the trie. Raises RuleConflict for a duplicate or an ambiguous pair of routes."""
        root = _Node()
        for _ in _grow(root, routes):
            pass
        return cls(root, len(routes))

    @classmethod
    async def compile_in_slices(cls, routes: Sequence[RouteConfig], per_slice: int = SLICE_ROUTES) -> RuleSet:
        """``compile``, letting the event loop run every ``per_slice`` routes: a reload of 1,000 routes
        holds a serving loop ~1.5 ms at a time instead of ~15 ms in one piece."""
        root = _Node()
        for done in _grow(root, routes):
            if done % per_slice == 0:
                await asyncio.sleep(0)
        return cls(root, len(routes))

    def __len__(self) -> int:
        return self._count

    def match(self, method: str, path: str) -> Rule:
        """The rule for a normalised path. Raises NoRoute when the most specific pattern has no
        route for ``method`` (a less specific pattern never picks up the method) or none matches."""
        node = self._walk(self._root, _segments(path), 0)
        rule = node.select(method) if node is not None else None
        if rule is None:
            raise NoRoute()
        return rule

    def _walk(self, node: _Node, segments: list[str], depth: int) -> _Node | None:
        """The most specific pattern matching ``segments`` below ``node``: at each position a literal
        segment beats `*`, and `*` beats a pattern that has already ended (depth-first, in that order)."""
        if depth < len(segments):
            child = node.children.get(segments[depth])
            if child is not None:
                found = self._walk(child, segments, depth + 1)
                if found is not None:
                    return found
            if node.wildcard is not None:
                found = self._walk(node.wildcard, segments, depth + 1)
                if found is not None:
                    return found
        return node if node.is_end else None

    def explain(self, method: str, path: str) -> Explanation:
        """Why ``method path`` gets the rule it gets, or none. ``path`` is normalised first."""
        try:
            clean = normalise(path)
        except BadPath as exc:
            return Explanation(None, f"the path is refused with 400: {exc.description}", path)
        node = self._walk(self._root, _segments(clean), 0)
        if node is None:
            return Explanation(None, f"no route covers {clean}, so it gets 404", clean)
        rule, routes = node.select(method), tuple(node.rules())
        if rule is None:
            allowed = ", ".join(_allowed_methods(node))
            return Explanation(None, f"the most specific route for this path, {routes[0].describe()}, allows "
                                     f"{allowed}, not {method}, so it gets 404", clean, routes)
        return Explanation(rule, f"{rule.describe()} matches {method} {clean} and forwards to upstream "
                                 f"`{rule.upstream}`; {rule.needs()}", clean, routes)


def _allowed_methods(node: _Node) -> list[str]:
    methods: list[str] = []
    for rule in node.rules():
        methods.extend(m for m in sorted(rule.methods or ()) if m not in methods)
    return methods
