"""Read a YAML config file into plain data, remembering the line of every value.

Also substitutes ``${VAR}`` / ``${VAR:-default}`` from the environment. Every problem found
here is collected (not raised one by one) so that ``check-config`` can print them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]
MAX_VALUES = 100_000    # after expanding aliases: a config is far smaller; this stops "billion laughs" files

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


@dataclass(frozen=True)
class Problem:
    """One config error: where it is (file:line), which key, and what is wrong."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def format_key(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Source:
    """The data of one YAML file, the line of each value, and the problems met reading it."""

    file: str
    data: Any = None
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    bad_values: set[Path_] = field(default_factory=set)   # values that could not be read as written

    def line_of(self, path: Path_) -> int | None:
        """The line of the longest prefix of ``path`` that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path_, message: str) -> None:
        """Record a problem at ``path`` (once: the same problem twice is reported once)."""
        found = Problem(self.file, self.line_of(path), format_key(path), message)
        if found not in self.problems:
            self.problems.append(found)

    def fail(self, line: int | None, message: str) -> Source:
        """Record a problem with the file as a whole."""
        self.problems.append(Problem(self.file, line, "", message))
        return self


def read_source(path: str | Path, environ: Mapping[str, str] | None = None) -> Source:
    """Read and parse ``path``; problems are collected in the returned ``Source``.

    ``data`` is a dict when the file could be read as a mapping; otherwise it is None and
    ``problems`` says why (it is never empty then).
    """
    env = os.environ if environ is None else environ
    src = Source(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return src.fail(None, "no such file")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return src.fail(None, f"cannot read the file ({_reason(exc)})")
    if _parse(src, text, env, _CLoader) is not None:
        return src
    # libyaml refused the document: the Python loader reads it again, for what it accepts beyond
    # libyaml (URLs in flow mappings, see _Loader) and for its file:line error messages.
    src.lines.clear()
    src.problems.clear()
    src.bad_values.clear()
    src.data = None
    _parse(src, text, env, _Loader)
    return src


def _parse(src: Source, text: str, env: Mapping[str, str], loader_class: type) -> Source | None:
    """Parse ``text`` into ``src``; None when ``loader_class`` refused its syntax (nothing recorded
    then, when that loader is libyaml's), else ``src`` with data or problems."""
    fallback_possible = loader_class is _CLoader
    try:
        loader = loader_class(text)
    except yaml.reader.ReaderError as exc:   # raised by the constructor itself for a control character
        line = text.count("\n", 0, exc.position) + 1
        return src.fail(line, f"invalid YAML: character #x{exc.character:04x} is not allowed in a YAML file")
    try:
        node = loader.get_single_node()
        if node is None:
            return _finish(src.fail(None, "the file is empty"))
        src.data = _Walker(loader, src, env).walk(node, ())
    except yaml.YAMLError as exc:
        if fallback_possible:
            return None
        if isinstance(exc, yaml.MarkedYAMLError):
            src.fail(*_syntax_problem(exc))
        else:
            src.fail(None, f"invalid YAML: {exc}")
    except RecursionError:
        src.fail(None, "the YAML is nested too deeply to be a tokengate config")
    except _TooBig:
        src.fail(None, f"the YAML expands to more than {MAX_VALUES} values (check its aliases)")
    finally:
        loader.dispose()
    return _finish(src)


def _finish(src: Source) -> Source:
    if src.data is not None and not isinstance(src.data, dict):
        src.fail(src.lines.get((), 1), "the top level must be a mapping of sections (listen:, tokens:, ...)")
        src.data = None
    elif src.data is None and not src.problems:
        src.fail(src.lines.get((), 1), "the file holds no settings (the top level must be a mapping of sections)")
    return src


class _CLoader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's parser (about 4x faster than PyYAML's own on a 1,000-route file), with SafeLoader's
    constructors; PyYAML's pure-Python SafeLoader where libyaml is missing."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads URLs inside flow mappings the way people write them.

    In a flow mapping (``{a: b}``) PyYAML ends a plain scalar at ``?`` (YAML 1.2 does not), and
    both end it at ``{``. So ``{reset_url: https://x.test/r?token={token}}`` would not parse. Here a
    ``?`` inside a plain scalar is kept, and a ``{...}``/``[...]`` group that starts inside a plain
    scalar (never at its start) is part of it. Only documents that are otherwise errors change.
    """

    _BREAKS = "\0 \t\r\n\x85\u2028\u2029"

    def scan_plain(self):  # type: ignore[no-untyped-def]
        if not self.flow_level:
            return super().scan_plain()
        chunks: list[str] = []
        start_mark = end_mark = self.get_mark()
        spaces: list[str] = []
        while True:
            if self.peek() == "#":
                break
            length = self._plain_run_length()
            if length == 0:
                break
            self.allow_simple_key = False
            chunks.extend(spaces)
            chunks.append(self.prefix(length))
            self.forward(length)
            end_mark = self.get_mark()
            spaces = self.scan_plain_spaces(self.indent + 1, start_mark)
            if not spaces or self.peek() == "#":
                break
        return yaml.ScalarToken("".join(chunks), True, start_mark, end_mark)

    def _plain_run_length(self) -> int:
        length, depth = 0, 0
        while True:
            ch = self.peek(length)
            if ch in self._BREAKS:
                return length
            if depth:
                depth += (ch in "{[") - (ch in "}]")
            elif ch == ":" and self.peek(length + 1) in self._BREAKS + ",[]{}":
                return length
            elif ch in "{[" and length:
                depth = 1
            elif ch in ",[]{}":
                return length
            length += 1


def _syntax_problem(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    """The line and message for a YAML syntax error; names where an unclosed construct began."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.problem and exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
        message += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
    return (mark.line + 1 if mark else None), message


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or exc.__class__.__name__


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooBig(Exception):
    pass


class _Walker:
    """Node graph -> plain data (dicts, lists, scalars), recording lines and substituting ``${VAR}``."""

    def __init__(self, loader: yaml.SafeLoader, src: Source, env: Mapping[str, str]) -> None:
        self.loader, self.src, self.env = loader, src, env
        self.open: set[int] = set()    # ids of the collections being walked: an alias to one is a cycle
        self.count = 0
        self.written: dict[int, set[int]] = {}   # mapping node id -> ids of the keys written in it (not merged)

    def walk(self, node: yaml.Node, path: Path_) -> Any:
        if not path:
            self._note_written_keys(node)
        self.src.lines[path] = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig()
        if isinstance(node, yaml.ScalarNode):
            value = self._construct(node, path)
            return self._substitute(value, path) if isinstance(value, str) else value
        if id(node) in self.open:
            self.src.problem(path, "this alias refers to a node that contains it, which has no end")
            return None
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _note_written_keys(self, root: yaml.Node) -> None:
        """Before any ``<<`` is flattened: which keys each mapping states itself (those may not repeat)."""
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                self.written[id(node)] = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
                stack.extend(n for pair in node.value for n in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    def _construct(self, node: yaml.ScalarNode, path: Path_) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception:   # e.g. "!!int abc" or the date 2024-99-99: PyYAML raises plain ValueErrors
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            self.src.problem(path, f"{node.value[:40]!r} cannot be read as a YAML {tag}; quote it if it is text")
            self.src.bad_values.add(path)
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        written = self.written.get(id(node), set())
        self.loader.flatten_mapping(node)   # merged keys come first; keys written here override them
        out: dict[str, Any] = {}
        seen_written: set[str] = set()
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            here = (*path, key)
            if id(key_node) in written:
                if key in seen_written:
                    self.src.lines[here] = key_node.start_mark.line + 1
                    self.src.problem(here, "this key appears twice in the same mapping")
                    continue
                seen_written.add(key)
            out[key] = self.walk(value_node, here)
            # Point errors about a key at the key's own line, not its value's.
            self.src.lines[here] = key_node.start_mark.line + 1
        return out

    def _key(self, key_node: yaml.Node, path: Path_) -> str:
        """Keys are taken as written: no ``${VAR}`` substitution."""
        key = self._construct(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
        if isinstance(key, str):
            return key
        text = str(key) if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
        self.src.lines[(*path, text)] = key_node.start_mark.line + 1
        self.src.problem((*path, text), "a key must be a plain string; put it in quotes")
        self.src.bad_values.add((*path, text))
        return text

    def _substitute(self, value: str, path: Path_) -> str:
        if "$" not in value:
            return value

        def replace(m: re.Match[str]) -> str:
            text = m.group(0)
            if text == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name is None:   # the text is not shown: it may be part of a secret written in the file
                self.src.problem(path, "malformed variable reference: write ${VAR} or ${VAR:-default}, "
                                       "and $$ for a literal $")
                self.src.bad_values.add(path)
                return ""
            found = self.env.get(name)
            if found:
                return found
            if default is not None:
                return default
            if found is None:
                self.src.problem(path, f"environment variable {name} is not set")
                self.src.bad_values.add(path)
            return ""

        return _VAR.sub(replace, value)
