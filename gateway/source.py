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

    def line_of(self, path: Path_) -> int | None:
        """The line of the longest prefix of ``path`` that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.file, self.line_of(path), format_key(path), message))


def read_source(path: str | Path, environ: Mapping[str, str] | None = None) -> Source:
    """Read and parse ``path``; problems are collected in the returned ``Source``."""
    env = os.environ if environ is None else environ
    src = Source(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        src.problems.append(Problem(src.file, None, "", "no such file"))
        return src
    except (OSError, UnicodeDecodeError) as exc:
        src.problems.append(Problem(src.file, None, "", f"cannot read the file ({_reason(exc)})"))
        return src
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            src.problems.append(Problem(src.file, None, "", "the file is empty"))
            return src
        src.data = _Walker(loader, src, env).walk(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        src.problems.append(Problem(src.file, line, "", f"invalid YAML: {exc.problem or exc.context}"))
    except yaml.YAMLError as exc:
        src.problems.append(Problem(src.file, None, "", f"invalid YAML: {exc}"))
    finally:
        loader.dispose()
    if src.data is not None and not isinstance(src.data, dict):
        src.problems.append(Problem(src.file, 1, "", "the top level must be a mapping of sections"))
        src.data = None
    return src


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


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or exc.__class__.__name__


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, src: Source, env: Mapping[str, str]) -> None:
        self.loader, self.src, self.env = loader, src, env

    def walk(self, node: yaml.Node, path: Path_) -> Any:
        self.src.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        return self._substitute(value, path) if isinstance(value, str) else value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                self.src.lines[(*path, key)] = key_node.start_mark.line + 1
                self.src.problem((*path, key), "this key appears twice in the same mapping")
                continue
            out[key] = self.walk(value_node, (*path, key))
            # Point errors about a key at the key's own line, not its value's.
            self.src.lines[(*path, key)] = key_node.start_mark.line + 1
        return out

    def _substitute(self, value: str, path: Path_) -> str:
        if "$" not in value:
            return value

        def replace(m: re.Match[str]) -> str:
            text = m.group(0)
            if text == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name is None:
                self.src.problem(path, f"malformed variable reference {text!r} (use ${{VAR}} or ${{VAR:-default}})")
                return ""
            found = self.env.get(name)
            if found:
                return found
            if default is not None:
                return default
            if found is None:
                self.src.problem(path, f"environment variable {name} is not set")
            return ""

        return _VAR.sub(replace, value)
