"""Building blocks shared by the config models: the frozen base model, field types and ``Invalid``.

``Invalid`` lets a model-level check name the exact keys at fault (``keys[1].kid``) instead of the
whole section, so ``load_config`` can point at the right line of the YAML file.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from .durations import parse_duration_s, parse_rate, parse_size_bytes

KeyPath = tuple[str | int, ...]
Duration = Annotated[float, BeforeValidator(parse_duration_s)]
ByteSize = Annotated[int, BeforeValidator(parse_size_bytes)]
Rate = Annotated[tuple[int, int], BeforeValidator(parse_rate)]
TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")   # RFC 9110 token: header names, methods


class Invalid(ValueError):
    """One or more problems found by a model check, each at a key path relative to that model."""

    def __init__(self, *found: tuple[KeyPath, str]) -> None:
        self.found = list(found)
        super().__init__("; ".join(message for _, message in self.found))


def raise_found(found: Sequence[tuple[KeyPath, str]]) -> None:
    if found:
        raise Invalid(*found)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _str_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StrList = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], BeforeValidator(_str_list)]


def split_url(value: str, schemes: tuple[str, ...], shape: str) -> SplitResult:
    """``value`` split, when it is an absolute URL with a host, a valid port and one of ``schemes``;
    else ValueError saying it must look like ``shape``."""
    try:
        parts = urlsplit(value)
        parts.port   # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("this is not a valid URL (check the host and port)") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"this must look like {shape}")
    return parts


def http_url(value: str) -> str:
    """An absolute http:// or https:// URL with a host."""
    split_url(value, ("http", "https"), "http://host[:port]/... or https://...")
    return value


HttpUrl = Annotated[str, AfterValidator(http_url)]


def suggest_key(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """For an unknown key at ``loc``: the allowed key at that place that it most resembles."""
    kinds: list[Any] = [root]
    for part in loc[:-1]:
        following = [t for kind in _expand(kinds) for t in _inside(kind, part)]
        kinds = following or kinds   # a union tag in the location names no key: stay where we are
    names = [f.alias or n for kind in _expand(kinds) if isinstance(kind, type) and issubclass(kind, BaseModel)
             for n, f in kind.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return close[0] if close else None


def _expand(kinds: list[Any]) -> list[Any]:
    out: list[Any] = []
    for kind in kinds:
        origin = get_origin(kind)
        if origin is Annotated:
            out += _expand([get_args(kind)[0]])
        elif origin in (Union, types.UnionType):
            out += _expand(list(get_args(kind)))
        else:
            out.append(kind)
    return out


def _inside(kind: Any, part: str | int) -> list[Any]:
    if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(part, str):
        return [f.annotation for n, f in kind.model_fields.items() if part in (n, f.alias)]
    origin, args = get_origin(kind), get_args(kind)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return [args[0]]
    if origin is dict and isinstance(part, str):
        return [args[1]]
    return []
