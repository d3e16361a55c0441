"""Helpers for the config tests: load a file expecting problems, and find the line a key is on."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gateway.config.load import ConfigError, load_config
from gateway.config.source import Problem

DATA = Path(__file__).parents[2] / "data"
SECRET_32 = "s" * 32


def problems_of(path: Path, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Load ``path`` expecting a ConfigError; return its problems (never empty)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    assert info.value.problems, "a ConfigError always says why"
    return info.value.problems


def single(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def line_in(path: Path, needle: str) -> int:
    """The line number of the one line of ``path`` that contains ``needle``."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits} of {path}"
    return hits[0]


def assert_single(path: Path, key: str, needle: str, environ: Mapping[str, str] | None = None) -> Problem:
    """Exactly one problem, at ``key``, on the line holding ``needle``."""
    found = single(problems_of(path, environ))
    assert (found.file, found.key, found.line) == (str(path), key, line_in(path, needle)), str(found)
    return found


@pytest.fixture
def write_raw(write_config: Callable[..., Path], keys_dir: Path) -> Callable[[str], Path]:
    """write_raw(text) -> path: dedented YAML text, with KEYS/ standing for the test keys directory."""

    def write(text: str) -> Path:
        return write_config(raw=textwrap.dedent(text).replace("KEYS/", f"{keys_dir}/"))

    return write
