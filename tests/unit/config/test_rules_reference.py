"""The route matcher (config/rules.py) against a naive reference written here from DESIGN.md's route semantics
(hypothesis): generated route sets and requests; the reference and ``RuleSet`` must agree on which
route answers (or none: 404), and on which pair of routes a set is refused for at load time.

The reference tries every route, as the words say, where RuleSet walks a trie:
- ``path`` matches that path and everything below it on a segment boundary; ``*`` is exactly one
  (non-empty) segment; matching is on the normalised path (``normalise`` runs first, as in the
  pipeline), whose segments are compared decoded with the segments as the route writes them.
- The most specific pattern wins, whatever the file order: "longest literal match, then fewer
  wildcards", read segment by segment from the left: at the first segment where two matching
  patterns differ, a literal beats ``*``, and ``*`` beats a pattern that has already ended
  (the reading tests/unit/config/test_rules.py's table pins: ``/a/b`` beats ``/a/*/c/d`` on ``/a/b/c/d``,
  ``/a/*/*`` beats ``/a/*`` on ``/a/x/y``).
- Methods choose only among the routes of that one pattern: the route listing the method, else the
  route without ``methods``, else none (404): a less specific pattern never picks up a method.
- Load time: two routes of one pattern whose methods overlap (no ``methods`` overlaps everything)
  are refused, naming the earliest such pair (the second as early as it can be, then the first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.config.load import RouteConfig
from gateway.config.rules import RuleConflict, RuleSet
from gateway.errors import NoRoute
from gateway.paths import normalise

EXAMPLES = 500
REQUESTS_PER_SET = 12

# Few segments, so that patterns overlap; with near misses (`a`/`ab`/`A`) and characters that
# normalise spells as escapes (`é`, `|`) or decodes (`%40` is `@`).
PATTERN_SEGMENTS = ["a", "ab", "b", "@me", "café", "a|b"]
PATH_SEGMENTS = [*PATTERN_SEGMENTS, "c", "A", "*", "a.b"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
REQUEST_METHODS = [*METHODS, "PATCH"]


@dataclass(frozen=True)
class Route:
    segments: tuple[str, ...]          # "*" for a wildcard
    methods: frozenset[str] | None     # None: every method
    written: str                       # the path as the config writes it

    def config(self) -> RouteConfig:
        methods = sorted(self.methods) if self.methods is not None else None
        return RouteConfig(path=self.written, upstream="up", methods=methods)


# --- the reference ---------------------------------------------------------------------------------

def covers(pattern: tuple[str, ...], path: list[str]) -> bool:
    return len(pattern) <= len(path) and all(p in ("*", s) for p, s in zip(pattern, path))


def specificity(pattern: tuple[str, ...], depth: int) -> tuple[int, ...]:
    """Per path segment: 2 a literal, 1 `*`, 0 the pattern has ended; compared left to right."""
    return tuple(2 if p != "*" else 1 for p in pattern) + (0,) * (depth - len(pattern))


def reference_conflict(routes: list[Route]) -> tuple[int, int] | None:
    for second, later in enumerate(routes):
        for first, earlier in enumerate(routes[:second]):
            if earlier.segments == later.segments and (
                    earlier.methods is None or later.methods is None or earlier.methods & later.methods):
                return first, second
    return None


def reference_match(routes: list[Route], method: str, path: list[str]) -> int | None:
    matching = [i for i, r in enumerate(routes) if covers(r.segments, path)]
    if not matching:
        return None
    best = max(specificity(routes[i].segments, len(path)) for i in matching)
    same_pattern = [i for i in matching if specificity(routes[i].segments, len(path)) == best]
    listing = [i for i in same_pattern if routes[i].methods is not None and method in routes[i].methods]
    every = [i for i in same_pattern if routes[i].methods is None]
    return (listing or every or [None])[0]


# --- generation ------------------------------------------------------------------------------------

ANY = st.integers(0, 2**32)   # one draw, read modulo a list's length: strategies built once, drawn cheaply
PATTERN_SEGMENT = st.sampled_from(["a", "a", "b", "b", "ab", "@me", "café", "a|b", "*", "*", "*"])   # overlapping
PATH_SEGMENT = st.sampled_from(PATH_SEGMENTS)
METHOD_SETS = st.one_of(st.none(), *[st.frozensets(st.sampled_from(METHODS), min_size=1, max_size=2)] * 2)
REQUEST_METHOD = st.sampled_from(REQUEST_METHODS)
SPELLINGS = st.sampled_from(["raw", "raw", "escaped", "escaped-lower"])
SEPARATORS = st.sampled_from(["/", "/", "//", "/./", "/x/../"])
ENDINGS = st.sampled_from(["", "", "/", "/."])


def pick(draw: st.DrawFn, items: list[str]) -> str:
    return items[draw(ANY) % len(items)]


def draw_route(draw: st.DrawFn) -> Route:
    # `/` (every path) now and then; mostly 1 to 4 segments, or nearly every set would repeat `/`.
    segments = () if draw(ANY) % 12 == 0 else tuple(draw(st.lists(PATTERN_SEGMENT, min_size=1, max_size=4)))
    slash = pick(draw, ["/", "/", "//"])   # a config may write `//` or a trailing `/`
    written = "/" + slash.join(segments) + pick(draw, ["", "", "/"])
    return Route(segments, draw(METHOD_SETS), written)


def spell_segment(draw: st.DrawFn, segment: str) -> str:
    """A segment as a client may send it: raw, or with escapes for its characters (any hex case)."""
    how = draw(SPELLINGS)
    if how == "raw":
        return segment
    text = "".join(f"%{b:02X}" for b in segment.encode())
    return text.lower() if how == "escaped-lower" else text


def fill(draw: st.DrawFn, patterns: list[tuple[str, ...]], at: int) -> str:
    """A segment for position ``at``: mostly a literal another pattern has there (so that patterns
    compete for the path), else anything."""
    literals = [p[at] for p in patterns if len(p) > at and p[at] != "*"]
    return pick(draw, literals) if literals and draw(ANY) % 3 else draw(PATH_SEGMENT)


def draw_request_path(draw: st.DrawFn, patterns: list[tuple[str, ...]]) -> tuple[str, list[str]]:
    """(raw path, its segments): below one of the patterns (its `*` filled in) or anywhere."""
    if draw(st.booleans()):
        pattern = patterns[draw(ANY) % len(patterns)]
        segments = [fill(draw, patterns, i) if s == "*" else s for i, s in enumerate(pattern)]
        segments += [fill(draw, patterns, i) for i in range(len(pattern), len(pattern) + draw(ANY) % 3)]
    else:
        segments = draw(st.lists(PATH_SEGMENT, max_size=5))
    raw = "".join(draw(SEPARATORS) + spell_segment(draw, segment) for segment in segments) + draw(ENDINGS)
    return raw if raw.startswith("/") else "/" + raw, segments


@dataclass(frozen=True)
class Case:
    routes: tuple[Route, ...]
    requests: tuple[tuple[str, str, tuple[str, ...]], ...]   # (method, raw path, its segments)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    found = [draw_route(draw) for _ in range(1 + draw(ANY) % 6)]
    for _ in range(draw(ANY) % 3):   # routes sharing a pattern: by method (disjoint lists) or in conflict
        twin = found[draw(ANY) % len(found)]
        free = [m for m in METHODS if twin.methods is not None and m not in twin.methods]
        if twin.methods is None and draw(ANY) % 4:
            continue   # a twin of a route without methods is always refused: keep most sets compiling
        if free and draw(ANY) % 5:
            methods: frozenset[str] | None = frozenset(draw(st.lists(st.sampled_from(free), min_size=1)))
        else:
            methods = draw(METHOD_SETS)
        written = twin.written.rstrip("/") + pick(draw, ["", "/"]) if twin.segments else "/"
        found.insert(draw(ANY) % (len(found) + 1), Route(twin.segments, methods, written))
    patterns = [r.segments for r in found]
    requests = []
    for _ in range(REQUESTS_PER_SET):
        raw, segments = draw_request_path(draw, patterns)
        requests.append((draw(REQUEST_METHOD), raw, tuple(segments)))
    return Case(tuple(found), tuple(requests))


def matched_index(rules: RuleSet, method: str, path: str) -> int | None:
    try:
        return rules.match(method, path).index
    except NoRoute as exc:
        assert exc.status == 404
        return None


def test_rule_set_agrees_with_the_reference_matcher() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases())
    def check(case: Case) -> None:
        configured = list(case.routes)
        conflict = reference_conflict(configured)
        if conflict is not None:
            with pytest.raises(RuleConflict) as refused:
                RuleSet.compile([r.config() for r in configured])
            assert (refused.value.first, refused.value.second) == conflict, [r.written for r in configured]
            seen["refused at load"] += 1
            return
        rules = RuleSet.compile([r.config() for r in configured])
        seen["compiled"] += 1
        for method, raw, segments in case.requests:
            path = normalise(raw)
            assert [unquote(s) for s in path.split("/") if s] == list(segments), (raw, path)
            expected = reference_match(configured, method, list(segments))
            got = matched_index(rules, method, path)
            assert got == expected, (
                f"{method} {raw} (normalised {path}): RuleSet gives {got}, the reference {expected}; "
                f"routes: {[(r.written, sorted(r.methods) if r.methods else None) for r in configured]}")
            if got is not None:
                assert rules.match(method, path).path == RouteConfig(path=configured[got].written, upstream="up").path
            tally(configured, method, raw, list(segments), expected, seen)

    check()
    # The run was not vacuous: each rule of the semantics decided some requests.
    for what in ["refused at load", "compiled", "matched", "no pattern covers it", "404 by method",
                 "a more specific pattern won", "a literal beat a wildcard", "a wildcard beat an ended pattern",
                 "a longer pattern lost on the literal", "the method chose among routes of one pattern",
                 "matched through escapes"]:
        assert seen[what] >= 10, (what, seen)



def tally(configured: list[Route], method: str, raw: str, path: list[str], expected: int | None,
          seen: Counter[str]) -> None:
    matching = [r for r in configured if covers(r.segments, path)]
    patterns = {r.segments for r in matching}
    seen["matched" if expected is not None else "no pattern covers it" if not matching else "404 by method"] += 1
    if "%" in raw and expected is not None:
        seen["matched through escapes"] += 1
    if expected is not None and sum(r.segments == configured[expected].segments for r in configured) > 1:
        seen["the method chose among routes of one pattern"] += 1
    if expected is None or len(patterns) < 2:
        return
    seen["a more specific pattern won"] += 1
    winner = configured[expected].segments
    for other in patterns - {winner}:
        at = next(i for i, (a, b) in enumerate(zip(specificity(winner, len(path)), specificity(other, len(path))))
                  if a != b)
        if at < len(winner) and winner[at] != "*":
            seen["a literal beat a wildcard" if at < len(other) else "a literal beat an ended pattern"] += 1
        elif at < len(winner):
            seen["a wildcard beat an ended pattern"] += 1
        if len(other) > len(winner):
            seen["a longer pattern lost on the literal"] += 1
