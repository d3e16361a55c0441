"""The store: the one interface for all shared state (revocations, refresh tokens, users, rate limits).

Two backends implement it: memory.py (embedded, one process) and redis/ (standalone,
Sentinel, Cluster). Both pass the same test suite (tests/store/). The key layout is written
down here, in one place; every key carries a hash tag (the part in braces) so that each
atomic step touches a single Redis Cluster slot.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

# ---- key layout (Redis) ------------------------------------------------------------------------
# The part in braces is the hash tag: keys that one atomic step (a Lua script) touches share it.
# deny:jti:{<iss>|<jti>}         "1", TTL = the token's remaining life            (revoked access token)
# deny:sub:{<iss>|<sub>}         epoch seconds (float as text); tokens of <sub> with iat below are dead;
#                                TTL = the longest life a token issued before it can still have
# deny:sid:{<iss>|<sid>}         "1", TTL = the longest life of an access token of that session (ended session)
# deny:index:{deny}              sorted set of '["<kind>","<iss>","<id>"]' (JSON) scored by expiry: lets a
#                                mirror load every live revocation in one pass (kind: jti, sub or sid)
# deny:values:{deny}             hash: the same members -> Revocation.value (jti: exp; sub: watermark;
#                                sid: when the session ended)
# refresh:{<family>}:<hash>      hash: sub, exp, data (JSON), state (live|rotated), rotated_at, next
#                                (hash of the successor), sealed (the winner's sealed_reply); TTL = exp
# refresh:family-of:{<hash>}     the family id of a refresh token (lookup by hash alone); TTL = exp
# family:{<family>}              hash: sub, iss, head (newest token), dead ("0" while live, else why it
#                                ended: "ended" on purpose, "reused" by reuse detection; "1", written
#                                by older versions, reads as "reused"); what lists the session (SessionInfo):
#                                created, last_used (each rotation), user_agent, client, method;
#                                TTL = the latest exp of its tokens
# families:{<iss>|<sub>}         set of family ids of a subject (logout-all, password reset)
# user:{<username>}              hash: the UserRecord fields, roles as JSON     (auth.users: store)
# users:{users}                  set of usernames
# rate:{<bucket>}                counter, TTL = window (the window opens with the bucket's first event)
# reset:{<hash>}                 the username a password reset token (by its SHA-256) was made for;
#                                TTL = the token's expiry (lookup by hash alone)
# reset-of:{<username>}          hash: hash (the user's one current reset token), exp; TTL = exp
# channel tokengate:revocations  pub/sub: one JSON message per revocation, so every mirror learns it at once
# Operations over several slots take steps in an order that is safe when cut short: revoke writes the
# entry, then the index, then publishes; add_refresh the family-of pointer, then token and family, then
# families:; add_user claims user:{..} atomically, then adds the name to users:{users} (again on every
# add/put, so a missed SADD heals). put_reset writes the reset:{..} pointer, then replaces reset-of:{..}
# (one script, which also hands back the replaced hash so its pointer can be deleted); take_reset reads
# the pointer, then compares-and-deletes reset-of:{..} in one script on the user's slot. That script
# alone decides, so a token is consumed once, and a superseded or expired one never; a pointer left
# behind by a step cut short leads to a reset-of:{..} that does not hold its hash, which is no token.
DENY_JTI = "deny:jti:"
DENY_SUB = "deny:sub:"
DENY_SID = "deny:sid:"
DENY_INDEX = "deny:index:{deny}"
DENY_VALUES = "deny:values:{deny}"
REFRESH = "refresh:"
REFRESH_FAMILY_OF = "refresh:family-of:"
FAMILY = "family:"
FAMILIES = "families:"
USER = "user:"
USERS = "users:{users}"
RATE = "rate:"
RESET = "reset:"
RESET_OF = "reset-of:"
ONCE = "once:"
REVOCATIONS_CHANNEL = "tokengate:revocations"

# Why a refresh family ended: on purpose (logout, logout-all, a password reset or change, an account
# disabled or deleted, a subject revoked), or because one of its rotated-away tokens came back.
EndReason = Literal["ended", "reused"]
ENDED: EndReason = "ended"
REUSED: EndReason = "reused"


class StoreUnavailable(Exception):
    """The store cannot be reached or did not answer in time. ``url`` never holds a password."""

    raised: ClassVar[int] = 0   # how many this process made: the store errors metric (metrics.py) reads it

    def __init__(self, url: str, reason: str) -> None:
        StoreUnavailable.raised += 1
        self.url, self.reason = url, reason
        super().__init__(f"store {url} is unavailable: {reason}")


RevocationKind = Literal["jti", "sub", "sid"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("jti", "sub", "sid")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: of a token id (``kind="jti"``), of a subject's earlier tokens (``"sub"``) or of
    every access token of one session (``"sid"``: the tokens whose ``sid`` claim names it).

    ``value``: for a jti, the token's exp (the entry's expiry); for a sub, the watermark (tokens
    with iat below it are dead); for a sid, when the session ended. ``expires_at``: when the entry may be
    forgotten (epoch seconds).
    ``published_at``: when the store announced it (on the feed only; what the mirror's lag is
    measured from). It takes no part in comparisons.
    """

    kind: RevocationKind
    iss: str
    id: str
    value: float
    expires_at: float
    published_at: float | None = field(default=None, compare=False)


class RevocationFeed(AsyncIterator[Revocation]):
    """A subscription to published revocations: ``async for revocation in feed``.

    To miss nothing, a mirror waits for ``ready()`` before it loads ``live_revocations``::

        async with store.revocation_events() as feed:     # __aenter__ waits for ready()
            apply(await store.live_revocations(time.time()))
            async for revocation in feed:
                apply(revocation)

    ``__anext__`` raises StoreUnavailable when the subscription breaks (the feed is then closed):
    reload and subscribe again. After ``aclose()`` (or the store's ``close()``) iteration stops.
    """

    def __aiter__(self) -> RevocationFeed:
        return self

    async def __aenter__(self) -> RevocationFeed:
        try:
            await self.ready()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def __anext__(self) -> Revocation: ...

    @abc.abstractmethod
    async def ready(self) -> None:
        """Wait until subscribed: every revocation published after this returns is delivered."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """End the subscription and release its connection (idempotent)."""


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    token_hash: str
    family: str
    sub: str
    exp: float
    data: Mapping[str, Any] = field(default_factory=dict)   # what the next access token needs (roles ...)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session (a refresh family) lists: ``id`` is the family (the ``sid`` of its access
    tokens); ``created`` and ``last_used`` (its latest rotation) are epoch seconds; ``method`` is
    ``password`` or the provider's name. A family written by an older version lists zeros and blanks."""

    id: str
    created: float = 0.0
    last_used: float = 0.0
    user_agent: str = ""
    client: str = ""
    method: str = ""


@dataclass(frozen=True, slots=True)
class Rotation:
    """The outcome of presenting a refresh token.

    ``ok``: it was live and is now rotated to the new hash. ``reused``: it had been rotated
    already (or its family was killed by reuse detection): the whole family is now dead. ``ended``:
    its family was ended on purpose (``kill_family`` with ``ENDED``, ``kill_families_of``); nothing
    changes, and it is no reuse, whether the token was the family's newest or a rotated-away one.
    ``unknown``: no such live token (expired, never issued). ``grace``: it was rotated less than
    ``grace_s`` ago; nothing changes, and ``sealed_reply`` is what the winning call stored with the
    rotation (the new pair, encrypted with a key only the old token's holder can derive), to be
    handed out again. ``record``: the presented token's record (ok, grace, reused, ended).
    """

    outcome: Literal["ok", "reused", "ended", "unknown", "grace"]
    record: RefreshRecord | None = None
    sealed_reply: bytes = b""


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    password_hash: str
    roles: tuple[str, ...] = ()
    email: str | None = None
    disabled: bool = False
    created_at: float = 0.0


class Store(abc.ABC):
    """Every method raises StoreUnavailable when the backend cannot be reached (never a redis error).

    Expiry is by wall-clock epoch seconds: the ``now`` arguments where given, else the store's clock.
    """

    safe_url: str

    # -- lifetime
    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and end open feeds; later calls raise StoreUnavailable."""

    # -- revocation
    @abc.abstractmethod
    async def revoke(self, revocation: Revocation) -> None:
        """Record it (a sub watermark only ever moves forward) and publish it to every subscriber.
        One whose ``expires_at`` has passed already is ignored."""

    @abc.abstractmethod
    async def live_revocations(self, now: float) -> list[Revocation]:
        """Every revocation not yet expired, each once."""

    async def live_revocation_pages(self, now: float) -> AsyncIterator[list[Revocation]]:
        """What a mirror loads at start and after a reconnect: every revocation not yet expired, in
        pages, so that a million of them are never all held at once (one may come twice). Here: one
        page (a store that holds them in memory anyway)."""
        yield await self.live_revocations(now)

    @abc.abstractmethod
    def revocation_events(self) -> RevocationFeed:
        """Revocations as they are published, from the feed's ``ready()`` on (see RevocationFeed).
        The iterator raises StoreUnavailable when the subscription breaks; the caller reloads
        live_revocations and subscribes again."""

    # -- refresh tokens
    @abc.abstractmethod
    async def add_refresh(self, record: RefreshRecord, iss: str, session: SessionInfo | None = None) -> None:
        """Store a new live refresh token (a new family when its family is new, listed with ``session``'s
        created, user_agent, client and method; ``last_used`` starts at ``created``)."""

    @abc.abstractmethod
    async def rotate_refresh(self, token_hash: str, successor: RefreshRecord, now: float,
                             grace_s: float = 0.0, sealed_reply: bytes = b"") -> Rotation:
        """Atomically: a live ``token_hash`` becomes rotated (remembering ``sealed_reply`` for
        ``grace_s``) and ``successor`` (same family) becomes live -> ok. Family ended on purpose ->
        ended (nothing changes). Already rotated less than grace_s ago -> grace (nothing changes).
        Already rotated otherwise, or family killed by reuse -> the family is killed (as reused), its
        newest token too -> reused. Missing/expired (``exp <= now``) -> unknown.
        Of N concurrent calls with one live token, exactly one gets ok; it sets the family's
        ``last_used`` to ``now``.
        The token is found by its hash alone: the successor is filed under the presented token's
        family (``Rotation.record.family``), whatever ``successor.family`` says, and is only stored
        on ok."""

    @abc.abstractmethod
    async def kill_family(self, family: str, reason: EndReason = ENDED) -> str | None:
        """Every token of that family dies, and the family remembers ``reason`` (a family that is dead
        already keeps the reason it died for). Returns the family's subject, None if unknown."""

    @abc.abstractmethod
    async def kill_families_of(self, iss: str, sub: str) -> int:
        """Every refresh family of that subject dies (ended on purpose); returns how many."""

    @abc.abstractmethod
    async def list_sessions(self, iss: str, sub: str) -> list[SessionInfo]:
        """The subject's live sessions (families neither ended nor expired), oldest first."""

    @abc.abstractmethod
    async def end_session(self, iss: str, sub: str, family: str) -> bool:
        """Atomically: when ``family`` is a live family of exactly this subject and issuer, it ends (on
        purpose, like logout) -> True. Unknown, another subject's, or dead already -> False, nothing changes."""

    @abc.abstractmethod
    async def find_refresh(self, token_hash: str) -> RefreshRecord | None:
        """The live record for this hash (None when missing, rotated, expired or its family dead)."""

    # -- users (auth.users: store)
    @abc.abstractmethod
    async def get_user(self, username: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def add_user(self, user: UserRecord) -> bool:
        """False when the username is taken (atomic: two signups for one name, one wins)."""

    @abc.abstractmethod
    async def put_user(self, user: UserRecord) -> None:
        """Replace the user's record as a whole (creates it when missing)."""

    @abc.abstractmethod
    async def delete_user(self, username: str) -> bool: ...

    @abc.abstractmethod
    async def list_users(self) -> list[UserRecord]: ...

    # -- password reset tokens
    @abc.abstractmethod
    async def put_reset(self, username: str, token_hash: str, expires_at: float) -> None:
        """Make ``token_hash`` the user's one reset token until ``expires_at``; any older one dies."""

    @abc.abstractmethod
    async def find_reset(self, token_hash: str, now: float) -> str | None:
        """The username when ``token_hash`` is its user's current, unexpired reset token; changes nothing."""

    @abc.abstractmethod
    async def take_reset(self, token_hash: str, now: float) -> str | None:
        """Atomically consume: the username when ``token_hash`` is its user's current, unexpired reset
        token, which is deleted; else None. Of N concurrent calls with one token, one gets the name."""

    # -- single-use values
    @abc.abstractmethod
    async def claim_once(self, key: str, expires_at: float) -> bool:
        """True the first time ``key`` is claimed before ``expires_at``, False every later time (until
        then). Of N concurrent calls with one key, one gets True. What a single-use value (a pending
        login's state) is checked with across every instance."""

    # -- rate limits
    @abc.abstractmethod
    async def hit(self, bucket: str, limit: int, window_s: int, now: float) -> float:
        """Count one event in ``bucket``'s current window. Returns 0 when allowed, else the seconds
        until the window lets events through again (for Retry-After)."""
