"""The ``upstreams`` and ``routes`` sections: where requests go, and who may send them there.

Route paths are checked here to be written the way a normalised request path looks; the rules
themselves are compiled by config/rules.py. Import these names from ``gateway.config.load``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .fields import TOKEN_CHARS, Duration, Invalid, KeyPath, Model, split_url


class UpstreamConfig(Model):
    url: str
    timeout: Duration = 30.0
    connect_timeout: Duration = 5.0
    max_connections: int = Field(100, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        parts = split_url(value, ("http", "https"), "http://host[:port][/base] or https://...")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("an upstream url takes no query, fragment or credentials")
        return value

    @field_validator("timeout", "connect_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0s")
        return value


def _is_odd_char(ch: str) -> bool:
    return ch in "?#\\%;" or ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F


class RouteConfig(Model):
    path: str
    upstream: str
    methods: tuple[str, ...] | None = None
    roles: tuple[Annotated[str, Field(min_length=1)], ...] | None = None
    public: bool = False
    name: str | None = None
    dpop: Literal["required"] | None = None   # required: only DPoP-bound tokens (RFC 9449) pass here

    @field_validator("path")
    @classmethod
    def _clean_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a route path starts with /")
        segments = [s for s in value.split("/") if s]
        for seg in segments:
            if seg in (".", "..") or any(_is_odd_char(ch) for ch in seg):
                raise ValueError(f"segment {seg!r} cannot match a normalised path; write the path as clients "
                                 "reach it after normalisation (no dot segments, %-escapes, ;, ?, # or spaces)")
            if "*" in seg and seg != "*":
                raise ValueError(f"`*` stands for one whole segment; {seg!r} mixes it with text")
        return "/" + "/".join(segments)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("leave `methods` out to allow every method; an empty list matches nothing")
        out = []
        for m in value:
            if not TOKEN_CHARS.fullmatch(m):
                raise ValueError(f"{m!r} is not an HTTP method")
            out.append(m.upper())
        if len(set(out)) != len(out):
            raise ValueError("a method is listed twice")
        return tuple(out)

    @model_validator(mode="after")
    def _public_or_roles(self) -> RouteConfig:
        if self.public and self.roles:
            raise Invalid((("roles",), "a public route needs no token, so it cannot require roles"))
        if self.public and self.dpop:
            raise Invalid((("dpop",), "a public route takes no token, so it cannot require a DPoP-bound one"))
        if self.roles == ():
            raise Invalid((("roles",), "`roles: []` would let no one in; leave it out to allow any "
                                       "authenticated caller"))
        return self

    @property
    def label(self) -> str:
        methods = ",".join(self.methods) if self.methods else "*"
        return self.name or f"{methods} {self.path}"


def _upstream_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"upstream name {value!r} may use only letters, digits and _ . -")
    return value


UpstreamName = Annotated[str, AfterValidator(_upstream_name)]


def upstream_problems(route_upstreams: list[Any], names: Collection[str]) -> list[tuple[KeyPath, str]]:
    """Routes naming an upstream that is not configured (works on raw data too)."""
    known = ", ".join(sorted(str(n) for n in names)) or "none"
    return [(("routes", i, "upstream"), f"unknown upstream {name!r} (known: {known})")
            for i, name in enumerate(route_upstreams) if isinstance(name, str) and name not in names]
