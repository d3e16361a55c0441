"""gateway.config.source: YAML -> plain data with the line of every value; ${VAR}; the flow-mapping URL scanner."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.config import source
from gateway.config.source import MAX_VALUES, Problem, Source, format_key, read_source
from loadtests.benchconfig import write_bench_config
from tests.unit.config.config_checks import DATA


@pytest.fixture
def read(tmp_path: Path) -> Callable[..., Source]:
    """read(text, **environ) -> the Source of that YAML text (dedented)."""

    def _read(text: str, **environ: str) -> Source:
        path = tmp_path / "source.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return read_source(path, environ)

    return _read


def data_of(src: Source) -> Any:
    assert src.problems == [], src.problems
    return src.data


# --- lines -------------------------------------------------------------------------------------------

NESTED = """\
    tokens:
      issuer: https://a.test
      keys:
        - kid: main
          alg: HS256
        - {kid: rsa1,
           alg: RS256}
    routes:
      - path: /a
        methods:
          - GET
          - POST
    """


def test_line_of_every_key_and_item(read: Callable[..., Source]) -> None:
    src = read(NESTED)
    assert src.lines[("tokens",)] == 1
    assert src.lines[("tokens", "issuer")] == 2
    assert src.lines[("tokens", "keys", 0)] == 4
    assert src.lines[("tokens", "keys", 0, "alg")] == 5
    assert src.lines[("tokens", "keys", 1)] == 6
    assert src.lines[("tokens", "keys", 1, "alg")] == 7
    assert src.lines[("routes", 0, "methods", 1)] == 12


def test_line_of_a_missing_key_is_its_nearest_parent(read: Callable[..., Source]) -> None:
    src = read(NESTED)
    assert src.line_of(("tokens", "keys", 1, "secret")) == 6
    assert src.line_of(("listen", "port")) == 1   # the document itself
    assert src.line_of(()) == 1


def test_problem_names_file_line_and_key(read: Callable[..., Source]) -> None:
    src = read(NESTED)
    src.problem(("tokens", "keys", 1, "alg"), "bad")
    src.problem(("tokens", "keys", 1, "alg"), "bad")   # the same problem twice is one problem
    assert src.problems == [Problem(src.file, 7, "tokens.keys[1].alg", "bad")]
    assert str(src.problems[0]) == f"{src.file}:7: tokens.keys[1].alg: bad"
    assert str(Problem("f.yaml", None, "", "no such file")) == "f.yaml: no such file"


@pytest.mark.parametrize("path, text", [((), ""), (("a",), "a"), (("a", 0, "b"), "a[0].b"), ((0, 1), "[0][1]")])
def test_format_key(path: tuple[str | int, ...], text: str) -> None:
    assert format_key(path) == text


# --- the flow-mapping scanner -------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("m: {reset_url: https://app.example.test/reset?token={token}}",
     {"reset_url": "https://app.example.test/reset?token={token}"}),
    ("m: {u: https://a.test/r?token={token}, from: x@y.test}",
     {"u": "https://a.test/r?token={token}", "from": "x@y.test"}),
    ("m: {u: http://h:8080/p?q=1&r={x}&s={y}}", {"u": "http://h:8080/p?q=1&r={x}&s={y}"}),
    ("m: {u: http://h/a?b}", {"u": "http://h/a?b"}),
    ("m: {u: a?b, v: c}", {"u": "a?b", "v": "c"}),
    ("m: {u: x[1], v: y}", {"u": "x[1]", "v": "y"}),
    ("m: [http://a.test/?q, b?]", ["http://a.test/?q", "b?"]),
    ("m: {u: https://a.test/x?t={token}&n={nested{deep}}}", {"u": "https://a.test/x?t={token}&n={nested{deep}}"}),
    ("m: {a: {b: https://a.test/?t={token}}}", {"a": {"b": "https://a.test/?t={token}"}}),
    ("m: {u: multi word?q={t},\n    v: w}", {"u": "multi word?q={t}", "v": "w"}),
])
def test_urls_in_flow_mappings(read: Callable[..., Source], text: str, value: Any) -> None:
    assert data_of(read(text)) == {"m": value}


def test_variable_unquoted_in_a_flow_mapping(read: Callable[..., Source]) -> None:
    assert data_of(read("k: {secret: ${S}, b: ${B:-x}}", S="s3")) == {"k": {"secret": "s3", "b": "x"}}


def test_design_example_reset_url_line(read: Callable[..., Source]) -> None:
    src = read("""\
        auth:
          mail: {smtp_url: smtp://127.0.0.1:1025, from: no-reply@example.test,
                 reset_url: https://app.example.test/reset?token={token}}
          signup: true
        """)
    assert data_of(src)["auth"]["mail"]["reset_url"] == "https://app.example.test/reset?token={token}"
    assert src.lines[("auth", "mail", "reset_url")] == 3
    assert src.lines[("auth", "signup")] == 4


# Ordinary YAML, block and flow: our loader must read each exactly as yaml.safe_load does.
STANDARD_DOCS = [
    "a: 1\nb: [1, 2, {c: d}]\n",
    "a: {b: c, d: [e, f]}\n",
    "a: {url: 'http://x/?q={t}'}\n",
    'a: {url: "http://x/?q={t}", b: c}\n',
    "a: {u: http://h:80/p, v: w}\n",
    "a: [a:b, c]\n",
    "a: {? k : v}\n",
    "a: [? k : v]\n",
    "a: {k: }\n",
    "a: [a, b, ]\n",
    "a: {k: v,}\n",
    "a: {b, c}\n",
    "a: {b: c d e, f: g}\n",
    "a: [1.5, -2, 0x1f, true, no, ~, null, 2001-12-14]\n",
    "a: !!str 1\nb: !!float 1\n",
    "a: &x {k: v}\nb: *x\nc: {<<: *x, l: w}\n",
    "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n",
    "m: &m1 {a: 1}\nn: &m2 {b: 2}\no: {<<: [*m1, *m2], c: 3}\n",
    "a: |\n  text {with} ? marks\n  and: colons\nb: >\n  folded\n  text\n",
    "a: 'single # not a comment'\nb: x # a comment\n",
    "a: b?c\nd: e{f}\ng: h[i]\n",
    "- a\n- {b: c}\n- [d, {e: [f, g]}]\n",
    "a: {\n  b: c,\n  d: e\n}\n",
    "a: [http://a.test/x, 'y']\n",
    "a: {'q?': 1, \"r{\": 2}\n",
    "a: x:y\nb: {k: x:y}\n",
    "a: {b:{c: d}}\n",
    "a: &a {<<: {x: 1}, y: 2}\nb: {<<: *a, y: 3}\nc: *a\n",
    "a: {<<: &a {<<: {y: 0}, y: 1}}\nz: *a\n",
    "a: '${NOT_SUBSTITUTED}'\n".replace("$", "x"),
]


@pytest.mark.parametrize("text", STANDARD_DOCS)
def test_standard_yaml_reads_as_safe_load_reads_it(read: Callable[..., Source], text: str) -> None:
    expected = yaml.safe_load(text)
    src = read(text)
    if isinstance(expected, dict):
        assert data_of(src) == _stringify(expected)
    else:
        assert src.data is None and len(src.problems) == 1


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    return value


@pytest.mark.parametrize("text", ["a: [b, c\nd: e\n", "a: {b: c\n", "a: b: c\n", "a: [b]]\n", "a: {b: [c}\n",
                                  "a:\n  - b\n c: d\n", "a: 'unterminated\n", "a: 1\n\tb: 2\n"])
def test_broken_yaml_stays_broken(read: Callable[..., Source], text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    src = read(text)
    assert src.data is None and len(src.problems) == 1 and src.problems[0].line is not None


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                     st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="$"), max_size=30))
_data = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="$"), max_size=10), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=10).filter(lambda k: "$" not in k), _data, max_size=4),
       flow=st.sampled_from([True, False, None]))
def test_dumped_data_reads_back_as_safe_load_reads_it(read: Callable[..., Source], data: dict[str, Any],
                                                      flow: bool | None) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    src = read(text)   # safe_dump starts every top-level key in column 0, so dedent changes nothing
    assert src.problems == [] and src.data == _stringify(yaml.safe_load(text))


# --- libyaml first, PyYAML's own parser for what libyaml refuses -------------------------------------

def _parsed_with(loader_class: type, path: Path) -> Source:
    src = Source(str(path))
    source._parse(src, path.read_text(encoding="utf-8"), {"TOKENGATE_SECRET": "s" * 40}, loader_class)
    return src


@pytest.mark.parametrize("name", ["design-example.yaml", "minimal.yaml", "bench-1000-routes"])
def test_libyaml_and_the_python_loader_read_a_config_alike(tmp_path: Path, name: str) -> None:
    """The fast path must not change a value or a line that an error message would name."""
    path = tmp_path / "config.yaml"
    if name == "bench-1000-routes":
        write_bench_config(path, 1000, 2, "memory://", False)
    else:   # DESIGN's example quotes the reset URL now: a file libyaml reads
        quoted = "reset_url: 'https://app.example.test/reset?token={token}'}"
        path.write_text((DATA / name).read_text().replace("reset_url: https://app.example.test/reset?token={token}}",
                                                          quoted))
    yaml.CSafeLoader(path.read_text()).get_single_node()   # libyaml reads it: the fast path is the one compared
    fast, slow = _parsed_with(source._CLoader, path), _parsed_with(source._Loader, path)
    assert fast.problems == slow.problems and fast.data == slow.data and fast.lines == slow.lines
    assert fast.data is not None and len(fast.lines) > 10


def test_libyaml_reads_valid_files_and_hands_the_rest_to_the_python_loader(read: Callable[..., Source]) -> None:
    assert yaml.__with_libyaml__ and issubclass(source._CLoader, yaml.CSafeLoader)
    text = "reset_url: {url: https://x.test/r?token={token}}\n"   # libyaml refuses '{' inside a flow scalar
    with pytest.raises(yaml.YAMLError):
        yaml.CSafeLoader(text).get_single_node()
    assert data_of(read(text)) == {"reset_url": {"url": "https://x.test/r?token={token}"}}


# --- anchors, aliases and merges -------------------------------------------------------------------

def test_anchors_aliases_and_merges(read: Callable[..., Source]) -> None:
    src = read("""\
        defaults: &up {timeout: 10s, connect_timeout: 2s}
        upstreams:
          a: {<<: *up, url: http://a.test}
          b:
            <<: *up
            url: http://b.test
            timeout: 5s
        audience: &aud [api, web]
        other: *aud
        """)
    data = data_of(src)
    assert data["upstreams"]["a"] == {"timeout": "10s", "connect_timeout": "2s", "url": "http://a.test"}
    assert data["upstreams"]["b"] == {"timeout": "5s", "connect_timeout": "2s", "url": "http://b.test"}
    assert data["other"] == ["api", "web"]
    assert src.lines[("upstreams", "b", "timeout")] == 7


def test_alias_to_its_own_parent_is_a_problem(read: Callable[..., Source]) -> None:
    src = read("a: &x [1, *x]\n")
    assert [p.key for p in src.problems] == ["a[1]"]


def test_alias_bomb_is_refused_quickly(read: Callable[..., Source]) -> None:
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.monotonic()
    src = read("\n".join(levels) + "\n")
    assert time.monotonic() - started < 5
    assert src.data is None and len(src.problems) == 1 and str(MAX_VALUES) in src.problems[0].message


# --- what the reader refuses ----------------------------------------------------------------------------

def test_duplicate_keys_point_at_the_second(read: Callable[..., Source]) -> None:
    src = read("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    assert [(p.key, p.line) for p in src.problems] == [("b.c", 4), ("a", 5)]
    assert src.data == {"a": 1, "b": {"c": 1}}


@pytest.mark.parametrize("text, key", [("1: a\n", "1"), ("true: a\n", "True"), ("null: a\n", "None"),
                                       ("x: {2.5: a}\n", "x.2.5"), ("? [a, b]\n: c\n", "<sequence>")])
def test_keys_must_be_strings(read: Callable[..., Source], text: str, key: str) -> None:
    src = read(text)
    assert [p.key for p in src.problems] == [key]


@pytest.mark.parametrize("text", ["a: !!int abc\n", "a: !!float x\n", "a: !!bool maybe\n", "a: !!timestamp x\n",
                                  "a: 2024-99-99\n", "a: !!binary 'é'\n", "a: !!python/name:os.system\n",
                                  "a: !custom x\n", "a: !!map x\n"])
def test_values_yaml_cannot_build_are_problems(read: Callable[..., Source], text: str) -> None:
    src = read(text)
    assert len(src.problems) == 1 and src.problems[0].line == 1


@pytest.mark.parametrize("text", ["a: \x01\n", "a: b\x7f\n", "\x00"])
def test_control_characters_are_a_problem_with_a_line(read: Callable[..., Source], text: str) -> None:
    src = read("x: 1\n" + text)
    assert src.data is None and [p.line for p in src.problems] == [2]


@pytest.mark.parametrize("text", ["[" * 5000, "a: " + "{b: " * 3000, "- " * 3000 + "x"])
def test_deep_nesting_is_a_problem_not_a_crash(read: Callable[..., Source], text: str) -> None:
    src = read(text)
    assert src.data is None and len(src.problems) == 1


def test_several_documents_are_refused(read: Callable[..., Source]) -> None:
    src = read("a: 1\n---\nb: 2\n")
    assert src.data is None and [p.line for p in src.problems] == [2]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"a: \xff\xfe\n")
    src = read_source(tmp_path / "bad.yaml", {})
    assert src.data is None and len(src.problems) == 1


def test_path_with_a_nul_byte() -> None:
    src = read_source("conf\x00ig.yaml", {})
    assert src.data is None and len(src.problems) == 1


# --- ${VAR} -------------------------------------------------------------------------------------------------

def test_substitution_everywhere_strings_are(read: Callable[..., Source]) -> None:
    src = read("""\
        a: ${A}
        b: [x${A}y, "${A}", '${A}']
        c: {d: {e: "${MISSING:-fallback}"}}
        f: $$${A}$$
        g: 5
        """, A="v")
    assert data_of(src) == {"a": "v", "b": ["xvy", "v", "v"], "c": {"d": {"e": "fallback"}}, "f": "$v$", "g": 5}


def test_keys_are_not_substituted(read: Callable[..., Source]) -> None:
    assert data_of(read("${A}: 1\n", A="v")) == {"${A}": 1}


def test_unset_variables_are_each_a_problem_and_mark_the_value(read: Callable[..., Source]) -> None:
    src = read("a: ${ONE}-${TWO}\nb: ok\n")
    assert [(p.key, p.line) for p in src.problems] == [("a", 1), ("a", 1)]
    assert src.bad_values == {("a",)} and src.data == {"a": "-", "b": "ok"}


def test_variable_values_are_not_read_again(read: Callable[..., Source]) -> None:
    assert data_of(read("a: ${A}\n", A="${B}")) == {"a": "${B}"}
