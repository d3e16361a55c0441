"""The package's imports, read with ``ast``: no cycle, every arrow points down the layers of the
README's "How the code is laid out" (LAYERS), ``errors.py`` imports nothing of gateway's, the steps
make no HTTP answers (no aiohttp.web), and only the Redis store's modules import ``redis``.

Every import counts wherever it stands, inside a function or under ``if TYPE_CHECKING:`` too: a late
import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

# Cycles not broken yet, each exactly as found (an entry must match its cycle: delete it once it is gone).
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def imported(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """What module ``name`` (at ``path``) imports: relative imports resolved, and ``from a import b``
    read as ``a.b`` when that is one of the ``known`` modules, else as ``a``."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """gateway's modules -> the gateway modules each imports."""
    mods = modules(package)
    return {name: imported(name, path, mods) & mods.keys() for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, sorted (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = stack[stack.index(node):]
                    del stack[stack.index(node):]
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def a_loop(graph: dict[str, set[str]], component: list[str]) -> str:
    """One import loop through a cycle's first module, for the failure message: "a -> b -> a"."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for target in sorted(graph[node] & members):
            if target == start:
                return " -> ".join([*paths[node], start])
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{component} is not a cycle")


def test_the_cycle_finder_finds_each_cycle_and_a_loop_through_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d", "f"}, "f": {"e"}, "g": {"g"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert a_loop(graph, ["a", "b", "c"]) == "a -> b -> c -> a"


def test_relative_and_late_imports_count(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("def f():\n    from .sub import low\n")
    (package / "sub" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                 "    from .. import top\n")
    (package / "sub" / "low.py").write_text("from . import other\nfrom ..top import f\n")
    (package / "sub" / "other.py").write_text("import os\n")
    assert import_graph(package) == {"pkg": set(), "pkg.top": {"pkg.sub.low"}, "pkg.sub": {"pkg.top"},
                                     "pkg.sub.low": {"pkg.sub.other", "pkg.top"}, "pkg.sub.other": set()}


def test_gateway_imports_run_one_way():
    graph = import_graph()
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, ("import cycles in gateway/ (imports inside functions and under TYPE_CHECKING count); "
                     "move the shared piece down, or pass it in:\n"
                     + "\n".join(f"  {', '.join(c)}: {a_loop(graph, c)}" for c in new))
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone (or changed): remove them from KNOWN_CYCLES: {gone}"


def test_errors_imports_nothing_of_gateways():
    mods = modules()
    ours = sorted(t for t in imported("gateway.errors", PACKAGE / "errors.py", mods)
                  if t == "gateway" or t.startswith("gateway."))
    assert not ours, f"gateway/errors.py must import nothing of gateway's; it imports {', '.join(ours)}"


def test_only_the_redis_store_imports_redis():
    mods = modules()
    importers = sorted(name for name, path in mods.items()
                       if any(t == "redis" or t.startswith("redis.") for t in imported(name, path, mods)))
    outside = [name for name in importers if not name.startswith("gateway.store.redis")]
    assert importers and not outside, ("only the Redis store (gateway/store/redis*.py) may import redis; "
                                       f"so do: {', '.join(outside) or 'none (where did it go?)'}")


# -- the arrows: cli and dev -> server -> auth, admin, pipeline, answers -> forward -> steps -> logs, metrics ->
#    store, config -> paths, errors. A module may import its own layer and the ones below, never above.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (7, ("gateway.cli", "gateway.dev", "gateway.__main__")),
    (6, ("gateway.server",)),
    (5, ("gateway.auth", "gateway.admin", "gateway.pipeline", "gateway.answers")),
    (4, ("gateway.forward",)),
    (3, ("gateway.steps",)),
    (2, ("gateway.logs", "gateway.metrics")),
    (1, ("gateway.store", "gateway.config")),
    (0, ("gateway.paths", "gateway.errors")),
]


def layer(module: str) -> int:
    if module == "gateway":   # the package itself: __version__
        return 0
    for rank, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS: add its folder there")


def test_every_arrow_points_down_or_sideways():
    upward = sorted((name, target) for name, targets in import_graph().items() for target in targets
                    if layer(target) > layer(name))
    assert not upward, ("imports against the layers (cli, dev > server > auth, admin, pipeline, answers > forward > "
                        "steps > logs, metrics > store, config > paths, errors): move the shared piece down, or "
                        "pass it in:\n" + "\n".join(f"  {a} -> {b}" for a, b in upward))


def imports_aiohttp_web(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.startswith("aiohttp.web") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp") and (
                (node.module or "").startswith("aiohttp.web") or any(a.name.startswith("web") for a in node.names)):
            return True
    return False


def test_the_steps_make_no_http_answers():
    web = sorted(name for name, path in modules().items() if name.startswith("gateway.steps") and imports_aiohttp_web(path))
    assert not web, f"steps raise errors from gateway.errors; answers.py makes the answers. These import aiohttp.web: {web}"


def test_every_error_the_gateway_answers_with_is_in_errors_py():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    ours = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    elsewhere = sorted(f"{name}.{node.name}" for name, path in modules().items() if name != "gateway.errors"
                       for node in ast.walk(ast.parse(path.read_text()))
                       if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id in ours for b in node.bases))
    assert not elsewhere, f"one error tree: define these in gateway/errors.py: {elsewhere}"
