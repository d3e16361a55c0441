"""Step 4: is this token revoked? Answered from a local mirror, never a store round trip.

The mirror holds every live revocation (token ids, ended sessions and per-subject watermarks). It subscribes to
the store's revocation events first, then loads everything live, so nothing falls in between;
after a lost connection it does both again. Until it is in sync, ``store.on_error`` decides:
deny (503) or allow on the last known state. Token ids and session ids live in a RevokedIds each
(12 bytes an id: a million revocations in ~12 MB); subject watermarks, one per subject, in a dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable

import numpy as np

from ..errors import DependencyDown, RevokedToken
from ..store.base import Revocation, Store, StoreUnavailable
from .identity import Identity
from .revoked_ids import RevokedIds, expiries_of

log = logging.getLogger("tokengate.denylist")
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
PURGE_EVERY_S = 60.0
LOAD_CHUNK = 10_000     # ids hashed per slice of a full reload (~20 ms) before the loop gets a turn
RevocationListener = Callable[[Revocation], object]
ResyncListener = Callable[[], object]


class Denylist:
    """The local mirror of the store's revocations, kept in step by pub/sub."""

    def __init__(self, store: Store, *, fail_open: bool = False, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._fail_open = fail_open
        self._clock = clock
        self._jti = RevokedIds()    # (iss, jti) until the entry may be forgotten (its expires_at)
        self._sid = RevokedIds()    # (iss, sid) of ended sessions, likewise
        self._sub: dict[tuple[str, str], tuple[float, float]] = {}   # (iss, sub) -> (watermark, expires_at)
        self._listeners: list[RevocationListener] = []
        self._resync_listeners: list[ResyncListener] = []
        self._applied_while_loading: list[Revocation] | None = None
        self._task: asyncio.Task[None] | None = None
        self.in_sync = False
        self._first_attempt = asyncio.Event()   # set once the first load succeeded or the store failed
        self.last_sync_at: float | None = None
        self.lag_s: float | None = None   # the last revocation's delay from its publication to this mirror

    def __len__(self) -> int:
        return len(self._jti) + len(self._sid) + len(self._sub)

    def add_listener(self, listener: RevocationListener) -> None:
        """Called with every revocation the mirror learns (to end long-lived connections)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: RevocationListener) -> None:
        self._listeners.remove(listener)

    def remove_resync_listener(self, listener: ResyncListener) -> None:
        self._resync_listeners.remove(listener)

    def add_resync_listener(self, listener: ResyncListener) -> None:
        """Called with no arguments after every full reload from the store (anything derived from
        the mirror, such as a cache of verified tokens, must be dropped then)."""
        self._resync_listeners.append(listener)

    def check(self, identity: Identity) -> None:
        """Raises RevokedToken, or DependencyDown while out of sync with ``on_error: deny``."""
        if not self.in_sync and not self._fail_open:
            raise DependencyDown("the revocation list is not available; try again shortly")
        now = self._clock()
        if self._jti.contains(identity.iss, identity.jti, now):
            raise RevokedToken("the access token was revoked")
        sid = identity.sid
        if sid is not None and self._sid.contains(identity.iss, sid, now):
            raise RevokedToken("the access token was revoked (its session was ended)")
        mark = self._sub.get((identity.iss, identity.sub))
        if mark is not None and (identity.iat is None or identity.iat < mark[0]):
            raise RevokedToken("the access token was revoked (all sessions of this subject were ended)")

    async def revoke(self, revocation: Revocation) -> None:
        """Record it in the store (every instance learns it) and in this mirror at once."""
        await self._store.revoke(revocation)
        self._apply(revocation)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="denylist-mirror")

    async def first_load(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for the first attempt to load the mirror; whether it is in sync.
        A store that cannot be reached ends the wait as soon as that attempt fails."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), timeout_s)
        return self.in_sync

    @property
    def tried(self) -> bool:
        """The first load was attempted: it succeeded (in_sync) or the store failed."""
        return self._first_attempt.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        delay_s = RETRY_MIN_S
        while True:
            try:
                await self._sync_and_listen()
            except Exception as exc:   # a lost store; or a bug, a reply nobody expected: never the task's end
                if not isinstance(exc, StoreUnavailable):
                    log.exception("revocation mirror failed; resynchronising")
                elif self.in_sync:
                    log.warning("revocation mirror lost the store (%s); resynchronising", exc.reason)
                    delay_s = RETRY_MIN_S
                self.in_sync = False
                self._first_attempt.set()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _sync_and_listen(self) -> None:
        # Subscribed before loading: a revocation published meanwhile arrives on the feed too.
        async with self._store.revocation_events() as feed:
            now = self._clock()
            await self._replace(self._store.live_revocation_pages(now), now)
            self.in_sync, self.last_sync_at = True, now
            self._first_attempt.set()
            log.info("revocation mirror in sync: %d entries", len(self))
            last_purge = now
            async for revocation in feed:
                if revocation.published_at is not None:
                    self.lag_s = max(0.0, self._clock() - revocation.published_at)
                self._apply(revocation)
                if self._clock() - last_purge > PURGE_EVERY_S:
                    last_purge = self._clock()
                    self._purge(last_purge)
        raise StoreUnavailable(self._store.safe_url, "the revocation feed ended")

    async def _replace(self, live: list[Revocation] | AsyncIterable[list[Revocation]], now: float) -> None:
        """Become exactly ``live`` (a list, or the store's pages of it). The ids are hashed in slices that
        let the event loop run in between and sorted off the loop (requests meanwhile see the previous
        mirror), then swapped in at once."""
        self._applied_while_loading = pending = []
        try:
            jtis, sids, subs = await _loaded(live)
        finally:
            self._applied_while_loading = None
        self._jti, self._sid, self._sub = jtis, sids, {}
        # Also what was revoked here while the slices ran: ``live`` may predate it, and the
        # feed may bring it only after the mirror is back in sync.
        for revocation in [*subs, *pending]:
            self._apply(revocation, notify=False)
        self._purge(now)
        for listener in self._resync_listeners:
            listener()

    def _apply(self, revocation: Revocation, notify: bool = True) -> None:
        if self._applied_while_loading is not None:
            self._applied_while_loading.append(revocation)
        if revocation.kind == "jti":
            self._jti.add(revocation.iss, revocation.id, revocation.expires_at)
        elif revocation.kind == "sid":
            self._sid.add(revocation.iss, revocation.id, revocation.expires_at)
        else:
            key = (revocation.iss, revocation.id)
            old = self._sub.get(key)
            if old is None or revocation.value >= old[0]:   # a watermark only moves forward
                self._sub[key] = (revocation.value, max(revocation.expires_at, old[1] if old else 0.0))
        if notify:
            for listener in self._listeners:
                listener(revocation)

    def _purge(self, now: float) -> None:
        self._jti.purge(now)
        self._sid.purge(now)
        self._sub = {k: v for k, v in self._sub.items() if v[1] > now}


async def _loaded(live: list[Revocation] | AsyncIterable[list[Revocation]]
                  ) -> tuple[RevokedIds, RevokedIds, list[Revocation]]:
    """The token ids and the session ids of ``live`` as a RevokedIds each, and its subject watermarks.
    Page by page (only the page at hand is held as objects: the store's million revocations never are),
    in slices that let the event loop run in between: at a million entries even one plain pass over a
    list takes a loop-stalling 0.3-0.8 s. An id that comes twice keeps its latest expiry."""
    ids = {"jti": RevokedIds(), "sid": RevokedIds()}
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {kind: ([], []) for kind in ids}
    subs = []
    async for page in _pages(live):
        for start in range(0, len(page), LOAD_CHUNK):
            by_kind: dict[str, list[Revocation]] = {kind: [] for kind in ids}
            for revocation in page[start:start + LOAD_CHUNK]:
                if revocation.kind == "sub":
                    subs.append(revocation)
                elif revocation.kind in by_kind:
                    by_kind[revocation.kind].append(revocation)
            for kind, some in by_kind.items():
                if some:
                    fingerprints, expiries = parts[kind]
                    fingerprints.append(ids[kind].fingerprints((r.iss, r.id) for r in some))
                    expiries.append(expiries_of(r.expires_at for r in some))
            await asyncio.sleep(0)
    for kind, (fingerprints, expiries) in parts.items():
        # The sort (~50-90 ms at 1M) runs in a thread: numpy lets go of the GIL meanwhile.
        await asyncio.to_thread(ids[kind].load, np.concatenate(fingerprints or [np.empty(0, np.uint64)]),
                                np.concatenate(expiries or [np.empty(0, np.uint32)]))
    return ids["jti"], ids["sid"], subs


async def _pages(live: list[Revocation] | AsyncIterable[list[Revocation]]) -> AsyncIterator[list[Revocation]]:
    if isinstance(live, list):
        yield live
    else:
        async for page in live:
            yield page
