"""MemoryStore: the embedded store (memory://) for one process, the quick start and unit tests.

No method awaits in the middle of a change, so each one is atomic on the event loop. Expiry follows
``clock`` (``time.time`` unless a test injects another); pub/sub runs over in-process queues.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from time import time

from .base import (ENDED, REUSED, EndReason, RefreshRecord, Revocation, RevocationFeed, Rotation, SessionInfo, Store,
                   StoreUnavailable, UserRecord)

SWEEP_EVERY_S = 60.0   # how often expired entries are dropped (each lookup checks expiry anyway)


@dataclass
class _Token:
    record: RefreshRecord
    state: str = "live"          # live | rotated
    rotated_at: float = 0.0
    sealed: bytes = b""


@dataclass
class _Family:
    sub: str
    iss: str
    exp: float
    head: str = ""
    ended: EndReason | None = None   # why it died; None while it lives
    session: SessionInfo | None = None   # what lists it (last_used moves with each rotation)


@dataclass
class _Window:
    count: int
    ends_at: float


@dataclass
class _State:
    revocations: dict[tuple[str, str, str], Revocation] = field(default_factory=dict)
    tokens: dict[str, _Token] = field(default_factory=dict)
    families: dict[str, _Family] = field(default_factory=dict)
    families_of: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    users: dict[str, UserRecord] = field(default_factory=dict)
    windows: dict[str, _Window] = field(default_factory=dict)
    resets: dict[str, tuple[str, float]] = field(default_factory=dict)   # hash -> (username, expires_at)
    reset_of: dict[str, str] = field(default_factory=dict)               # username -> current hash
    claimed: dict[str, float] = field(default_factory=dict)              # claim_once key -> expires_at


class MemoryFeed(RevocationFeed):
    """Subscribed from creation on: revoke() puts every revocation into each open feed's queue."""

    def __init__(self, feeds: set[MemoryFeed]) -> None:
        self._feeds = feeds
        self._queue: asyncio.Queue[Revocation | None] = asyncio.Queue()
        feeds.add(self)

    def put(self, revocation: Revocation | None) -> None:
        self._queue.put_nowait(revocation)

    async def ready(self) -> None:
        return None

    async def __anext__(self) -> Revocation:
        if self not in self._feeds and self._queue.empty():
            raise StopAsyncIteration
        revocation = await self._queue.get()
        if revocation is None:   # closed
            raise StopAsyncIteration
        return revocation

    async def aclose(self) -> None:
        if self in self._feeds:
            self._feeds.discard(self)
            self.put(None)


class MemoryStore(Store):
    def __init__(self, clock: Callable[[], float] = time) -> None:
        self.safe_url = "memory://"
        self._clock = clock
        self._s = _State()
        self._feeds: set[MemoryFeed] = set()
        self._closed = False
        self._swept_at = clock()

    def _open(self) -> _State:
        """The state, after dropping what expired (at most once a minute); raises once closed."""
        if self._closed:
            raise StoreUnavailable(self.safe_url, "the store is closed")
        now = self._clock()
        if now - self._swept_at >= SWEEP_EVERY_S:
            self._swept_at = now
            self._sweep(now)
        return self._s

    def _sweep(self, now: float) -> None:
        s = self._s
        s.revocations = {k: r for k, r in s.revocations.items() if r.expires_at > now}
        s.tokens = {h: t for h, t in s.tokens.items() if t.record.exp > now}
        s.families = {f: fam for f, fam in s.families.items() if fam.exp > now}
        for key, fams in list(s.families_of.items()):
            fams.intersection_update(s.families)
            if not fams:
                del s.families_of[key]
        s.windows = {b: w for b, w in s.windows.items() if w.ends_at > now}
        s.resets = {h: r for h, r in s.resets.items() if r[1] > now}
        s.reset_of = {u: h for u, h in s.reset_of.items() if h in s.resets}
        s.claimed = {k: exp for k, exp in s.claimed.items() if exp > now}

    # -- lifetime
    async def ping(self) -> None:
        self._open()

    async def close(self) -> None:
        self._closed = True
        for feed in list(self._feeds):
            await feed.aclose()

    # -- revocation
    async def revoke(self, revocation: Revocation) -> None:
        s = self._open()
        if revocation.expires_at <= self._clock():
            return
        key = (revocation.kind, revocation.iss, revocation.id)
        old = s.revocations.get(key)
        if old is not None and old.expires_at > self._clock():   # a watermark only moves forward
            revocation = dataclasses.replace(revocation, value=max(old.value, revocation.value),
                                             expires_at=max(old.expires_at, revocation.expires_at))
        s.revocations[key] = revocation
        announced = dataclasses.replace(revocation, published_at=self._clock())
        for feed in self._feeds:
            feed.put(announced)

    async def live_revocations(self, now: float) -> list[Revocation]:
        s = self._open()
        s.revocations = {k: r for k, r in s.revocations.items() if r.expires_at > now}
        return list(s.revocations.values())

    def revocation_events(self) -> MemoryFeed:
        self._open()
        return MemoryFeed(self._feeds)

    # -- refresh tokens
    async def add_refresh(self, record: RefreshRecord, iss: str, session: SessionInfo | None = None) -> None:
        s = self._open()
        family = self._live_family(record.family)
        if family is None:
            info = SessionInfo(record.family) if session is None else dataclasses.replace(
                session, id=record.family, last_used=session.created)
            family = s.families[record.family] = _Family(record.sub, iss, record.exp, session=info)
        family.exp, family.head = max(family.exp, record.exp), record.token_hash
        s.tokens[record.token_hash] = _Token(record)
        s.families_of.setdefault((iss, record.sub), set()).add(record.family)

    async def rotate_refresh(self, token_hash: str, successor: RefreshRecord, now: float,
                             grace_s: float = 0.0, sealed_reply: bytes = b"") -> Rotation:
        s = self._open()
        token = s.tokens.get(token_hash)
        family = self._live_family(token.record.family) if token else None
        if token is None or family is None or token.record.exp <= now:
            return Rotation("unknown")
        record = token.record
        if family.ended is None and token.state == "live":
            token.state, token.rotated_at, token.sealed = "rotated", now, sealed_reply
            successor = dataclasses.replace(successor, family=record.family)
            s.tokens[successor.token_hash] = _Token(successor)
            family.exp, family.head = max(family.exp, successor.exp), successor.token_hash
            if family.session is not None:
                family.session = dataclasses.replace(family.session, last_used=now)
            return Rotation("ok", record)
        if family.ended is None and now - token.rotated_at < grace_s:
            return Rotation("grace", record, token.sealed)
        if family.ended == ENDED:
            return Rotation("ended", record)
        family.ended = REUSED
        return Rotation("reused", record)

    async def kill_family(self, family: str, reason: EndReason = ENDED) -> str | None:
        self._open()
        found = self._live_family(family)
        if found is None:
            return None
        if found.ended is None:   # the first reason stands: a later logout does not hide a reuse
            found.ended = reason
        return found.sub

    async def kill_families_of(self, iss: str, sub: str) -> int:
        s = self._open()
        killed = 0
        for name in s.families_of.pop((iss, sub), set()):
            family = self._live_family(name)
            if family is not None and family.ended is None:
                family.ended = ENDED
                killed += 1
        return killed

    async def list_sessions(self, iss: str, sub: str) -> list[SessionInfo]:
        s = self._open()
        found = []
        for name in s.families_of.get((iss, sub), ()):
            family = self._live_family(name)
            if family is not None and family.ended is None and family.sub == sub:
                found.append(family.session or SessionInfo(name))
        return sorted(found, key=lambda info: (info.created, info.id))

    async def end_session(self, iss: str, sub: str, family: str) -> bool:
        s = self._open()
        found = self._live_family(family)
        if found is None or found.ended is not None or (found.iss, found.sub) != (iss, sub):
            return False
        found.ended = ENDED
        s.families_of.get((iss, sub), set()).discard(family)
        return True

    async def find_refresh(self, token_hash: str) -> RefreshRecord | None:
        s = self._open()
        token = s.tokens.get(token_hash)
        if token is None or token.state != "live" or token.record.exp <= self._clock():
            return None
        family = self._live_family(token.record.family)
        return token.record if family is not None and family.ended is None else None

    def _live_family(self, name: str) -> _Family | None:
        family = self._s.families.get(name)
        return family if family is not None and family.exp > self._clock() else None

    # -- users
    async def get_user(self, username: str) -> UserRecord | None:
        return self._open().users.get(username)

    async def add_user(self, user: UserRecord) -> bool:
        users = self._open().users
        if user.username in users:
            return False
        users[user.username] = user
        return True

    async def put_user(self, user: UserRecord) -> None:
        self._open().users[user.username] = user

    async def delete_user(self, username: str) -> bool:
        return self._open().users.pop(username, None) is not None

    async def list_users(self) -> list[UserRecord]:
        users = self._open().users
        return [users[name] for name in sorted(users)]

    # -- single-use values
    async def claim_once(self, key: str, expires_at: float) -> bool:
        claimed = self._open().claimed
        if key in claimed and claimed[key] > self._clock():
            return False
        claimed[key] = expires_at
        return True

    # -- password reset tokens
    async def put_reset(self, username: str, token_hash: str, expires_at: float) -> None:
        s = self._open()
        older = s.reset_of.get(username)
        if older is not None:
            s.resets.pop(older, None)
        s.resets[token_hash] = (username, expires_at)
        s.reset_of[username] = token_hash

    async def find_reset(self, token_hash: str, now: float) -> str | None:
        s = self._open()
        username, expires_at = s.resets.get(token_hash, ("", 0.0))
        current = username and s.reset_of.get(username) == token_hash
        return username if current and expires_at > now else None

    async def take_reset(self, token_hash: str, now: float) -> str | None:
        username = await self.find_reset(token_hash, now)
        s = self._s
        found = s.resets.pop(token_hash, None)
        if found is not None and s.reset_of.get(found[0]) == token_hash:
            del s.reset_of[found[0]]   # a used or expired token goes; another user's stays
        return username

    # -- rate limits
    async def hit(self, bucket: str, limit: int, window_s: int, now: float) -> float:
        windows = self._open().windows
        window = windows.get(bucket)
        if window is None or window.ends_at <= now:
            window = windows[bucket] = _Window(0, now + window_s)
        window.count += 1
        return window.ends_at - now if window.count > limit else 0.0
