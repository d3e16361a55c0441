"""RedisStore: the shared store on Redis (standalone, Sentinel or Cluster; see base.py for the keys).

Every redis error that means "unreachable" becomes StoreUnavailable here, at the boundary: no other
module sees a redis exception. Multi-key atomic steps are Lua scripts on keys sharing a hash tag.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from redis import exceptions as rx
from redis.asyncio import RedisCluster

from ..base import (DENY_INDEX, DENY_JTI, DENY_SID, DENY_SUB, DENY_VALUES, ENDED, FAMILIES, FAMILY, ONCE, RATE, REFRESH,
                    REFRESH_FAMILY_OF, RESET, RESET_OF, REVOCATIONS_CHANNEL, USER, USERS, EndReason, RefreshRecord,
                    Revocation, Rotation, SessionInfo, Store, StoreUnavailable, UserRecord)
from .client import follow_master
from .feed import RedisFeed, encode_revocation
from .scripts import (ADD_MEMBER, ADD_REFRESH, ADD_USER, END_SESSION, FIND_REFRESH, HIT, INDEX, KILL_FAMILY, LIVE_PAGE,
                      PUT_RESET, PUT_USER, ROTATE, SWEEP, TAKE_RESET, WATERMARK)

_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.ClusterError, rx.RedisClusterException,
                rx.TryAgainError, rx.ReadOnlyError, rx.OutOfMemoryError, rx.NoPermissionError, OSError)
_UNAVAILABLE_REPLIES = ("BUSY", "MASTERDOWN", "LOADING")   # plain ResponseErrors that mean "not now"
MAX_REASON_CHARS = 200   # some errors carry a client's whole repr
LIVE_ENTRIES = 5_000   # index entries a reload's page asks ZSCAN for (a hint: a few ms of Redis's time)
SWEEP_PAGE = 1_000     # expired index entries a sweep call drops
MAX_SWEEPS = 1_000     # sweep calls a reload makes at most (a million expired entries); the rest waits
_ONE_ID = {"jti": DENY_JTI, "sid": DENY_SID}   # revocations of one id (not a watermark): a plain key each
_SESSION_FIELDS = ("sub", "iss", "dead", "created", "last_used", "user_agent", "client", "method")


def is_unavailable(exc: BaseException) -> bool:
    """Does this redis (or socket) error mean the store cannot answer, rather than a bug?"""
    return isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, rx.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES))


def _tagged(prefix: str, *parts: str) -> str:
    return prefix + "{" + "|".join(parts) + "}"


def _refresh_key(family: str, token_hash: str) -> str:
    return f"{REFRESH}{{{family}}}:{token_hash}"


def _ms(t: float) -> int:
    """Epoch seconds -> epoch milliseconds for PXAT, rounded up: an entry never dies early."""
    return math.ceil(t * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore(Store):
    """``client`` runs commands; ``subscriber`` (never retrying) carries the revocation feeds."""

    def __init__(self, client: Any, subscriber: Any, safe_url: str, *, secrets: Iterable[str] = (),
                 on_close: Iterable[Callable[[], Awaitable[Any]]] = (), feed_ping_s: float = 5.0) -> None:
        self.safe_url = safe_url
        self._c, self._subscriber = client, subscriber
        self._secrets = tuple(s for s in secrets if s)
        self._on_close = (client.aclose, subscriber.aclose, *on_close)
        self.feed_ping_s = feed_ping_s   # a feed quiet this long PINGs; no answer in as long again breaks it
        self._feeds: set[RedisFeed] = set()
        self._closed = False
        self._is_cluster = isinstance(client, RedisCluster)
        scripts = {"watermark": WATERMARK, "index": INDEX, "sweep": SWEEP, "live_page": LIVE_PAGE,
                   "add_refresh": ADD_REFRESH, "rotate": ROTATE, "find_refresh": FIND_REFRESH,
                   "kill_family": KILL_FAMILY, "add_member": ADD_MEMBER, "add_user": ADD_USER,
                   "put_user": PUT_USER, "hit": HIT, "put_reset": PUT_RESET, "take_reset": TAKE_RESET,
                   "end_session": END_SESSION}
        self._scripts = {name: client.register_script(script) for name, script in scripts.items()}

    def translate(self, exc: BaseException) -> StoreUnavailable | None:
        """StoreUnavailable for an error that means "unreachable" (without any password), else None."""
        if not is_unavailable(exc):
            return None
        reason = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return StoreUnavailable(self.safe_url, reason[:MAX_REASON_CHARS])

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        if self._closed:
            raise StoreUnavailable(self.safe_url, "the store is closed")
        try:
            if self._is_cluster:
                # A cluster client left to learn its slot map from concurrent first commands breaks some of
                # their connections (redis-py 8.1): learn it once, under the client's own lock (cheap after).
                await self._c.initialize()
            yield
        except Exception as exc:
            translated = self.translate(exc)
            if translated is None:
                raise
            raise translated from exc

    async def _run(self, script: str, keys: list[str], *args: Any) -> Any:
        return await self._scripts[script](keys=keys, args=args)

    # -- lifetime
    async def ping(self) -> None:
        async with self._guard():
            await self._c.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in list(self._feeds):
            await feed.aclose()
        for close in self._on_close:
            await close()

    # -- revocation
    async def revoke(self, revocation: Revocation) -> None:
        now = time.time()
        if revocation.expires_at <= now:
            return
        r, member = revocation, json.dumps([revocation.kind, revocation.iss, revocation.id], separators=(",", ":"))
        async with self._guard():
            if r.kind in _ONE_ID:
                await self._c.set(_tagged(_ONE_ID[r.kind], r.iss, r.id), b"1", pxat=_ms(r.expires_at))
            else:
                await self._run("watermark", [_tagged(DENY_SUB, r.iss, r.id)], repr(r.value), _ms(r.expires_at))
            # The index has the last word (a later watermark may be in force): publish what it holds.
            value, expires_at = await self._run("index", [DENY_INDEX, DENY_VALUES], member, repr(r.expires_at),
                                                repr(r.value), repr(now))
            r = dataclasses.replace(r, value=float(value), expires_at=float(expires_at))
            await self._c.publish(REVOCATIONS_CHANNEL, encode_revocation(r))

    async def live_revocations(self, now: float) -> list[Revocation]:
        found: dict[tuple[str, str, str], Revocation] = {}
        async for page in self.live_revocation_pages(now):
            found.update(((r.kind, r.iss, r.id), r) for r in page)   # a page may repeat an entry: kept once
        return list(found.values())

    async def live_revocation_pages(self, now: float) -> AsyncIterator[list[Revocation]]:
        """Read in pages, never in one long command: a million revocations in one script held Redis for
        seconds (every other client waited) and outlasted the command timeout, so a mirror never loaded.
        ZSCAN returns every entry that is there for the whole read (some twice); one added meanwhile
        reaches the mirror on its feed, which is subscribed before the read. The next page is asked for
        while this one is decoded and taken in (Redis's time and ours overlap)."""
        async with self._guard():
            await follow_master(self._c)   # Sentinel: a reload reads the master of now, never an old one
            for _ in range(MAX_SWEEPS):   # the expired ones go first, a page a call
                if await self._run("sweep", [DENY_INDEX, DENY_VALUES], repr(now), SWEEP_PAGE) < SWEEP_PAGE:
                    break
        asking = asyncio.ensure_future(self._live_page(b"0", now))
        try:
            while True:
                cursor, flat = await asking
                if cursor != b"0":
                    asking = asyncio.ensure_future(self._live_page(cursor, now))
                members = flat[::3]
                decoded = json.loads(b"[" + b",".join(members) + b"]")   # one C scan a page, not one a member
                yield [Revocation(kind, iss, id_, float(value), float(expires_at))
                       for (kind, iss, id_), expires_at, value in zip(decoded, flat[1::3], flat[2::3])]
                if cursor == b"0":
                    return
        finally:   # a reader that stopped early (or failed) leaves no call behind, and no unread error
            asking.cancel()
            asking.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _live_page(self, cursor: bytes, now: float) -> tuple[bytes, list[bytes]]:
        async with self._guard():
            next_cursor, *flat = await self._run("live_page", [DENY_INDEX, DENY_VALUES], cursor, LIVE_ENTRIES,
                                                 repr(now))
        return next_cursor, flat

    def revocation_events(self) -> RedisFeed:
        if self._closed:
            raise StoreUnavailable(self.safe_url, "the store is closed")
        return RedisFeed(self._subscriber, self.safe_url, self.translate, self._feeds, self.feed_ping_s)

    # -- refresh tokens
    async def add_refresh(self, record: RefreshRecord, iss: str, session: SessionInfo | None = None) -> None:
        if not record.family:
            raise ValueError("a refresh token needs a family id")   # an empty hash tag would split the slots
        fam, exp_ms = record.family, _ms(record.exp)
        info = session or SessionInfo(fam)
        async with self._guard():
            await self._c.set(_tagged(REFRESH_FAMILY_OF, record.token_hash), fam, pxat=exp_ms)
            await self._run("add_refresh", [_refresh_key(fam, record.token_hash), _tagged(FAMILY, fam)],
                            record.sub, repr(record.exp), exp_ms, json.dumps(dict(record.data)), iss,
                            record.token_hash, repr(info.created), info.user_agent, info.client, info.method)
            await self._run("add_member", [_tagged(FAMILIES, iss, record.sub)], fam, exp_ms)

    async def rotate_refresh(self, token_hash: str, successor: RefreshRecord, now: float,
                             grace_s: float = 0.0, sealed_reply: bytes = b"") -> Rotation:
        async with self._guard():
            found = await self._c.get(_tagged(REFRESH_FAMILY_OF, token_hash))
            if found is None:
                return Rotation("unknown")
            fam = _text(found)
            succ = dataclasses.replace(successor, family=fam)
            pointer = _tagged(REFRESH_FAMILY_OF, succ.token_hash)
            # The successor's pointer goes first: once ok is returned, the new token must be findable.
            await self._c.set(pointer, fam, pxat=_ms(succ.exp))
            reply = await self._run(
                "rotate", [_refresh_key(fam, token_hash), _refresh_key(fam, succ.token_hash), _tagged(FAMILY, fam)],
                repr(now), repr(grace_s), sealed_reply, succ.token_hash, succ.sub, repr(succ.exp),
                _ms(succ.exp), json.dumps(dict(succ.data)))
            outcome = _text(reply[0])
            if outcome != "ok":
                await self._c.delete(pointer)
        if outcome == "unknown":
            return Rotation("unknown")
        record = RefreshRecord(token_hash, fam, _text(reply[1]), float(reply[2]), json.loads(reply[3]))
        return Rotation(outcome, record, bytes(reply[4]) if outcome == "grace" else b"")

    async def kill_family(self, family: str, reason: EndReason = ENDED) -> str | None:
        async with self._guard():
            reply = await self._run("kill_family", [_tagged(FAMILY, family)], reason)
        return None if reply is None else _text(reply[0])

    async def kill_families_of(self, iss: str, sub: str) -> int:
        key, killed = _tagged(FAMILIES, iss, sub), 0
        async with self._guard():
            families = [_text(f) for f in await self._c.smembers(key)]
            for family in families:
                reply = await self._run("kill_family", [_tagged(FAMILY, family)], ENDED)
                killed += reply is not None and reply[1] == b"1"
            if families:
                await self._c.srem(key, *families)
        return killed

    async def list_sessions(self, iss: str, sub: str) -> list[SessionInfo]:
        async with self._guard():
            families = sorted(_text(f) for f in await self._c.smembers(_tagged(FAMILIES, iss, sub)))
            # One read per family, each on its own slot; a family whose hash expired is simply gone.
            async with self._c.pipeline(transaction=False) as pipe:
                for family in families:
                    pipe.hmget(_tagged(FAMILY, family), list(_SESSION_FIELDS))
                found = await pipe.execute()
        sessions = [_session(family, [None if v is None else _text(v) for v in fields])
                    for family, fields in zip(families, found)
                    if fields[0] is not None and _text(fields[0]) == sub and _text(fields[1]) == iss
                    and _text(fields[2]) == "0"]
        return sorted(sessions, key=lambda info: (info.created, info.id))

    async def end_session(self, iss: str, sub: str, family: str) -> bool:
        async with self._guard():
            ended = await self._run("end_session", [_tagged(FAMILY, family)], iss, sub)
            if ended == 1:   # tidy: the set is only a hint (list_sessions checks each family itself)
                await self._c.srem(_tagged(FAMILIES, iss, sub), family)
        return ended == 1

    async def find_refresh(self, token_hash: str) -> RefreshRecord | None:
        async with self._guard():
            found = await self._c.get(_tagged(REFRESH_FAMILY_OF, token_hash))
            if found is None:
                return None
            fam = _text(found)
            reply = await self._run("find_refresh", [_refresh_key(fam, token_hash), _tagged(FAMILY, fam)])
        if reply is None:
            return None
        return RefreshRecord(token_hash, fam, _text(reply[0]), float(reply[1]), json.loads(reply[2]))

    # -- users
    async def get_user(self, username: str) -> UserRecord | None:
        async with self._guard():
            fields = await self._c.hgetall(_tagged(USER, username))
        return decode_user(fields) if fields else None

    async def add_user(self, user: UserRecord) -> bool:
        async with self._guard():
            created = await self._run("add_user", [_tagged(USER, user.username)], *encode_user(user))
            await self._c.sadd(USERS, user.username)   # also when taken: heals a set that missed the name
        return bool(created)

    async def put_user(self, user: UserRecord) -> None:
        async with self._guard():
            await self._run("put_user", [_tagged(USER, user.username)], *encode_user(user))
            await self._c.sadd(USERS, user.username)

    async def delete_user(self, username: str) -> bool:
        async with self._guard():
            deleted = await self._c.delete(_tagged(USER, username))
            await self._c.srem(USERS, username)
        return bool(deleted)

    async def list_users(self) -> list[UserRecord]:
        async with self._guard():
            names = sorted(_text(n) for n in await self._c.smembers(USERS))
            async with self._c.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(_tagged(USER, name))
                found = await pipe.execute()
        return [decode_user(fields) for fields in found if fields]   # a name whose hash is gone is skipped

    # -- password reset tokens (see base.py for the order of the steps)
    async def put_reset(self, username: str, token_hash: str, expires_at: float) -> None:
        exp_ms = _ms(expires_at)
        async with self._guard():
            await self._c.set(_tagged(RESET, token_hash), username, pxat=exp_ms)
            older = await self._run("put_reset", [_tagged(RESET_OF, username)], token_hash, repr(expires_at), exp_ms)
            if older is not None and _text(older) != token_hash:
                await self._c.delete(_tagged(RESET, _text(older)))   # it leads nowhere now: tidy up

    async def find_reset(self, token_hash: str, now: float) -> str | None:
        async with self._guard():
            found = await self._c.get(_tagged(RESET, token_hash))
            if found is None:
                return None
            current, exp = await self._c.hmget(_tagged(RESET_OF, _text(found)), ["hash", "exp"])
        if current is None or _text(current) != token_hash or float(exp) <= now:
            return None
        return _text(found)

    async def take_reset(self, token_hash: str, now: float) -> str | None:
        async with self._guard():
            found = await self._c.get(_tagged(RESET, token_hash))
            if found is None:
                return None
            username = _text(found)
            taken = await self._run("take_reset", [_tagged(RESET_OF, username)], token_hash, repr(now))
            await self._c.delete(_tagged(RESET, token_hash))   # used, superseded or expired: dead either way
        return username if taken == 1 else None

    # -- single-use values
    async def claim_once(self, key: str, expires_at: float) -> bool:
        async with self._guard():
            return bool(await self._c.set(_tagged(ONCE, key), b"1", nx=True, pxat=max(_ms(expires_at), 1)))

    # -- rate limits
    async def hit(self, bucket: str, limit: int, window_s: int, now: float) -> float:
        async with self._guard():
            wait_ms = await self._run("hit", [_tagged(RATE, bucket)], limit, int(window_s))
        return int(wait_ms) / 1000



def _session(family: str, fields: list[str | None]) -> SessionInfo:
    """A SessionInfo from the HMGET of _SESSION_FIELDS (a family of an older version has only the first three)."""
    _, _, _, created, last_used, user_agent, client, method = fields
    return SessionInfo(family, float(created or 0), float(last_used or created or 0), user_agent or "", client or "",
                       method or "")


def encode_user(user: UserRecord) -> list[str]:
    fields = ["username", user.username, "password_hash", user.password_hash, "roles", json.dumps(list(user.roles)),
              "disabled", "1" if user.disabled else "0", "created_at", repr(user.created_at)]
    return fields + (["email", user.email] if user.email is not None else [])


def decode_user(fields: dict[bytes, bytes]) -> UserRecord:
    f = {_text(k): _text(v) for k, v in fields.items()}
    return UserRecord(username=f["username"], password_hash=f["password_hash"], roles=tuple(json.loads(f["roles"])),
                      email=f.get("email"), disabled=f.get("disabled") == "1",
                      created_at=float(f.get("created_at", "0")))
