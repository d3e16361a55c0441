"""Things tied to a token, indexed the way a revocation names them: by (iss, jti), (iss, sub) and
(iss, sid) for a token that names its session.

The verified-token cache and the watcher of long-lived connections both keep one, so that a
revocation the mirror learns finds what it ends without a scan.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from ..store.base import Revocation
from .identity import Identity

Item = TypeVar("Item", bound=Hashable)
Key = tuple[str, str]


class RevocableIndex(Generic[Item]):
    def __init__(self) -> None:
        self._by_jti: dict[Key, set[Item]] = {}
        self._by_sub: dict[Key, set[Item]] = {}
        self._by_sid: dict[Key, set[Item]] = {}
        self._by_kind = {"jti": self._by_jti, "sub": self._by_sub, "sid": self._by_sid}

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_jti.values())

    def add(self, identity: Identity, item: Item) -> None:
        self._by_jti.setdefault((identity.iss, identity.jti), set()).add(item)
        self._by_sub.setdefault((identity.iss, identity.sub), set()).add(item)
        if identity.sid is not None:
            self._by_sid.setdefault((identity.iss, identity.sid), set()).add(item)

    def discard(self, identity: Identity, item: Item) -> None:
        _discard(self._by_jti, (identity.iss, identity.jti), item)
        _discard(self._by_sub, (identity.iss, identity.sub), item)
        if identity.sid is not None:
            _discard(self._by_sid, (identity.iss, identity.sid), item)

    def touched_by(self, revocation: Revocation) -> list[Item]:
        """The items of the revoked token id, of every token of the revoked subject, or of the ended session."""
        index = self._by_kind.get(revocation.kind, self._by_sub)
        return list(index.get((revocation.iss, revocation.id), ()))

    def clear(self) -> None:
        self._by_jti.clear()
        self._by_sub.clear()
        self._by_sid.clear()

    def is_empty(self) -> bool:
        return not self._by_jti and not self._by_sub and not self._by_sid


def _discard(index: dict[Key, set[Item]], key: Key, item: Item) -> None:
    items = index.get(key)
    if items is not None:
        items.discard(item)
        if not items:
            del index[key]
