"""Steps 3 and 4 for a token seen before: the verified-token cache, and ``Authenticator`` around it.

A hit skips the signature and claim checks and the revocation lookup, so it must never accept
what those would refuse. Entries are keyed by the token's exact text, only a token that passed
both checks goes in, and each one dies when the verifier would start refusing it (``exp`` plus
the leeway), when the revocation mirror learns a revocation that touches it (its ``jti`` or its
subject), when the mirror reloads from the store, and when its issuer's keys are replaced.

Refusals that hold for good are kept too, beside the accepted tokens and as many: a genuinely
signed token that expired (it stays expired), and one that was revoked (until it expires, when
the verifier would call it expired instead). A client retrying with such a token is refused
without the signature check. Any other refusal (bad signature, unknown key, not yet valid ...)
may change with the keys or the clock and is checked again every time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ExpiredToken, InvalidToken, RevokedToken
from ..store.base import Revocation
from .denylist import Denylist
from .extract import check_b64token
from .identity import Identity
from .revocable import RevocableIndex
from .verify import Verifier

if TYPE_CHECKING:
    from ..logs import AccessNote

@dataclass(slots=True)
class CachedToken:
    identity: Identity
    until: float                                   # epoch seconds; from then on the verifier refuses it
    headers: dict[str, Mapping[str, str]] = field(default_factory=dict)   # per upstream, for Passport


class TokenCache:
    """At most ``max_entries`` verified tokens by exact text; the oldest entry goes first when full."""

    def __init__(self, max_entries: int, leeway_s: float) -> None:
        self.max_entries = max_entries
        self.leeway_s = leeway_s
        self._entries: dict[str, CachedToken] = {}
        self._index: RevocableIndex[str] = RevocableIndex()
        self._refused: dict[str, tuple[type[InvalidToken], str, float]] = {}   # token -> (error, description, until)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> CachedToken | None:
        entry = self._entries.get(token)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.until:
            self._drop(token)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, token: str, identity: Identity, until: float | None = None) -> CachedToken | None:
        """Keep a token that has just passed verification and the revocation check, until the
        verifier would refuse it (or ``until``, when that comes first)."""
        if self.max_entries <= 0:
            return None
        if token in self._entries:
            self._drop(token)
        while len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))   # dicts keep insertion order: the oldest first
        limit = identity.exp + self.leeway_s
        entry = self._entries[token] = CachedToken(identity, limit if until is None else min(limit, until))
        self._index.add(identity, token)
        return entry

    def refusal(self, token: str, now: float) -> InvalidToken | None:
        """The error to answer a token refused for good with, as new; None when not known (or no more)."""
        known = self._refused.get(token)
        if known is None:
            return None
        error, description, until = known
        if now >= until:
            del self._refused[token]
            return None
        return error(description)

    def refuse(self, token: str, error: ExpiredToken | RevokedToken, until: float = math.inf) -> None:
        """Remember a refusal that holds until ``until`` (an expiry holds for ever)."""
        if self.max_entries <= 0:
            return
        self._refused.pop(token, None)
        while len(self._refused) >= self.max_entries:
            del self._refused[next(iter(self._refused))]   # the oldest first
        self._refused[token] = (type(error), error.description, until)

    def revoke(self, revocation: Revocation) -> int:
        """Drop what a revocation touches: the token id, or every token of the subject. Returns how many."""
        return self._drop_all(self._index.touched_by(revocation))

    def drop_issuer(self, issuer: str) -> int:
        """Drop every token of one issuer (its keys were replaced: a key may be gone)."""
        return self._drop_all([t for t, e in self._entries.items() if e.identity.iss == issuer])

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self._refused.clear()   # the store may have lost revocations: the mirror now knows best

    def _drop_all(self, tokens: Iterable[str]) -> int:
        count = 0
        for token in tokens:
            count += self._drop(token)
        return count

    def _drop(self, token: str) -> int:
        entry = self._entries.pop(token, None)
        if entry is None:
            return 0
        self._index.discard(entry.identity, token)
        return 1


class Authenticator:
    """token -> Identity: the cache when it holds the token, else the verifier and the mirror.

    Raises what Verifier.verify and Denylist.check raise. The mirror's listeners keep the cache
    honest; while the mirror is out of sync every token takes the full path, so ``store.on_error``
    decides exactly as it does without a cache.
    """

    def __init__(self, verifier: Verifier, denylist: Denylist, cache: TokenCache,
                 clock: Callable[[], float] = time.time) -> None:
        self.verifier, self.denylist, self.cache = verifier, denylist, cache
        self._clock = clock
        denylist.add_listener(cache.revoke)
        denylist.add_resync_listener(cache.clear)
        if verifier.jwks is not None:
            verifier.jwks.add_listener(cache.drop_issuer)

    def close(self) -> None:
        """Stop listening to the mirror (a reload replaced this Authenticator)."""
        self.denylist.remove_listener(self.cache.revoke)
        self.denylist.remove_resync_listener(self.cache.clear)

    async def authenticate(self, token: str, note: AccessNote | None = None) -> CachedToken:
        """The cache entry for a good token (its ``headers`` slot is the caller's to fill). The
        token's b64token syntax is checked here, on a miss: what is cached passed it already. On a
        miss, ``note.verified_at`` (when a note is given) marks where verification ended and the
        revocation check began, for the metrics' stages."""
        now = self._clock()
        if self.denylist.in_sync:
            entry = self.cache.get(token, now)
            if entry is not None:
                return entry
            refusal = self.cache.refusal(token, now)
            if refusal is not None:
                raise refusal
        try:
            identity = await self.verifier.verify(check_b64token(token))
        except ExpiredToken as exc:   # raised only after the signature was found genuine
            self.cache.refuse(token, exc)
            raise
        if note is not None:
            note.verified_at = time.perf_counter()
        # No await between the check and the put: a revocation cannot slip in between.
        try:
            self.denylist.check(identity)
        except RevokedToken as exc:
            self.cache.refuse(token, exc, until=identity.exp + self.cache.leeway_s)
            raise
        until = None
        if self.verifier.jwks is not None and identity.iss in self.verifier.jwks:
            until = self._clock() + self.verifier.jwks.fresh_for_s(identity.iss)
        entry = self.cache.put(token, identity, until)
        return entry if entry is not None else CachedToken(identity, identity.exp)
