"""Identity: who a verified token says the caller is. Built by verify, read by authorize and forward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SESSION_CLAIM = "sid"   # the session (refresh family) that minted an access token: what ending a session denies


@dataclass(frozen=True, slots=True)
class Identity:
    sub: str
    roles: frozenset[str]
    jti: str
    iss: str
    exp: float
    iat: float | None
    claims: Mapping[str, Any]       # every verified claim, as the token carried it

    @property
    def sid(self) -> str | None:
        """The session this token belongs to, when it names one (only tokens the gateway mints do)."""
        sid = self.claims.get(SESSION_CLAIM)
        return sid if isinstance(sid, str) and sid else None

    def has_any_role(self, roles: frozenset[str]) -> bool:
        return not roles.isdisjoint(self.roles)
