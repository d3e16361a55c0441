"""DPoP proofs spent (RFC 9449 11.1): DpopProof -> nothing, or InvalidDpopProof when its jti was seen
before within its window, here or at any instance (the store's claim_once decides), or DependencyDown.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from ..errors import DependencyDown, InvalidDpopProof
from ..store.base import Store, StoreUnavailable
from .dpop import DpopProof, b64url

REPLAY_PREFIX = "dpop:"     # claim_once keys of spent proofs (the store adds its own `once:` prefix)
CLOCK_MARGIN_S = 5.0        # a spent proof is remembered this much longer: clocks of instances and store differ


def replay_key(proof: DpopProof) -> str:
    """What a spent proof is remembered by: a hash of its key's thumbprint and its jti (the jkt, in
    base64url, holds no "|"). Scoped by key, so nobody can spend another client's jti ahead of it."""
    return b64url(hashlib.sha256(f"{proof.jkt}|{proof.jti}".encode()).digest())


class ProofReplay:
    """Spent proofs (RFC 9449 11.1): each proof is accepted once across the fleet while its `iat`
    keeps it acceptable. The store decides (``claim_once``: one winner among all instances); a
    bounded local LRU of the hashes seen here answers repeats without a store round trip.

    The store call cannot be skipped for a proof this instance has not seen: the same proof may have
    been spent at another instance a moment ago, and a local-only check would let a captured proof be
    replayed once per instance. So: one dict lookup for every proof, one store call for new ones."""

    def __init__(self, store: Store, max_age_s: float, *, capacity: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._store, self._max_age_s, self._capacity, self._clock = store, max_age_s, capacity, clock
        self._seen: OrderedDict[str, float] = OrderedDict()   # replay key -> until when it is spent

    async def check_unused(self, proof: DpopProof) -> None:
        """Spend ``proof`` (call after check_proof passed). Raises InvalidDpopProof when it was spent
        before, here or at another instance; DependencyDown when the store cannot tell (fail closed)."""
        expires_at = proof.iat + self._max_age_s + CLOCK_MARGIN_S   # after that its iat refuses it anyway
        try:
            first = await self.claim(replay_key(proof), expires_at)
        except StoreUnavailable as exc:
            raise DependencyDown("the store that keeps DPoP proofs single-use is unavailable") from exc
        if not first:
            raise InvalidDpopProof("the DPoP proof was used before (its jti is replayed)")

    async def claim(self, jti_hash: str, expires_at: float) -> bool:
        """True the first time ``jti_hash`` is claimed (fleet-wide) before ``expires_at``, else False."""
        now = self._clock()
        spent_until = self._seen.get(jti_hash)
        if spent_until is not None and spent_until > now:
            return False   # seen here: no store call (a replay flood costs the store nothing)
        # Remembered before the await: copies of this proof arriving meanwhile lose here, at once.
        self._remember(jti_hash, expires_at, now)
        try:
            return await self._store.claim_once(REPLAY_PREFIX + jti_hash, expires_at)
        except BaseException:
            self._seen.pop(jti_hash, None)   # undecided: the store is asked again next time
            raise

    def _remember(self, key: str, expires_at: float, now: float) -> None:
        seen = self._seen
        seen[key] = expires_at
        seen.move_to_end(key)
        # Oldest first: drop what expired, and beyond capacity the oldest (the store still refuses it).
        while seen and (len(seen) > self._capacity or next(iter(seen.values())) <= now):
            seen.popitem(last=False)
