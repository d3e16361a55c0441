"""What `tokengate revoke` and `POST /admin/revoke` do: turn a jti, a subject or a whole token
into a Revocation, record it in the store, and (for a subject) end its refresh families.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config.load import GatewayConfig
from ..errors import ExpiredToken
from ..steps.verify import Verifier
from ..store.base import Revocation, Store


class NothingToRevoke(Exception):
    """The request names nothing that could still be used (an expired token, no target)."""


@dataclass(frozen=True)
class Outcome:
    revocation: Revocation
    families_killed: int = 0

    def describe(self) -> str:
        r = self.revocation
        what = f"token {r.id}" if r.kind == "jti" else f"every token of subject {r.id} issued before now"
        extra = f", {self.families_killed} refresh families ended" if r.kind == "sub" else ""
        return f"revoked {what} (issuer {r.iss}){extra}"


async def build_revocation(cfg: GatewayConfig, *, jti: str | None = None, sub: str | None = None,
                           token: str | None = None, iss: str | None = None,
                           now: float | None = None) -> Revocation:
    """Exactly one of jti, sub, token. Raises ValueError for bad input, NothingToRevoke for an
    expired token, InvalidToken for a token that is not ours (its signature is checked)."""
    if sum(x is not None for x in (jti, sub, token)) != 1:
        raise ValueError("name exactly one of jti, sub or token")
    now = time.time() if now is None else now
    issuer = iss or cfg.tokens.issuer
    if token is not None:
        verifier = Verifier(cfg.tokens, cfg.identity)
        try:
            identity = await verifier.verify(token)
        except ExpiredToken:
            raise NothingToRevoke("that token has expired already: nothing to revoke") from None
        finally:
            await verifier.close()
        expires_at = identity.exp + cfg.tokens.leeway
        return Revocation("jti", identity.iss, identity.jti, identity.exp, expires_at)
    target = jti if jti is not None else sub
    if not isinstance(target, str) or not target or len(target) > 1024:
        raise ValueError("a jti or sub is a non-empty string of at most 1024 characters")
    if jti is not None:
        expires_at = now + cfg.tokens.longest_life_s
        return Revocation("jti", issuer, jti, expires_at, expires_at)
    return Revocation("sub", issuer, target, now, now + cfg.tokens.longest_life_s)


async def apply_revocation(store: Store, revocation: Revocation,
                           record: Callable[[Revocation], Awaitable[None]] | None = None) -> Outcome:
    """Record it (with ``record``, e.g. a Denylist's revoke, else ``store.revoke``); a subject's
    revocation also ends every refresh family of that subject."""
    await (record or store.revoke)(revocation)
    killed = 0
    if revocation.kind == "sub":
        killed = await store.kill_families_of(revocation.iss, revocation.id)
    return Outcome(revocation, killed)
