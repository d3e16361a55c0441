"""Sessions: issue, rotate and end refresh-token families; login, refresh and logout build on these.

A refresh token is an opaque random string; the store keeps only its SHA-256 hash, with its family,
subject, expiry and what the next access token needs (roles, email). Access tokens carry the family
id as the private claim ``sid``, so logout can end the session without the refresh token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config.load import GatewayConfig, TokensConfig
from ..errors import (DependencyDown, InvalidDpopProof, InvalidRefreshToken, RefreshTokenReused, RevokedToken,
                      SessionEnded)
from ..pipeline import Gateway
from ..steps.denylist import Denylist
from ..steps.identity import SESSION_CLAIM, Identity
from ..steps.tokens import Minter
from ..store import store_reachable
from ..store.base import ENDED, REUSED, EndReason, RefreshRecord, Revocation, Rotation, SessionInfo, Store
from .accounts.directory import AuthenticatedUser, UserDirectory
from .ratelimit import client_address

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("tokengate.sessions")

REFRESH_TOKEN_BYTES = 32          # 256 bits
FAMILY_ID_BYTES = 16
MAX_REFRESH_TOKEN_CHARS = 512
MAX_USER_AGENT_CHARS = 256        # what a session list shows of the login's User-Agent
PASSWORD_METHOD = "password"      # a session's method when no provider made it
_SEAL_INFO = b"tokengate/refresh-grace-reply/v1"
_NONCE_BYTES = 12
_WATERMARK_TRIES = 2


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What login and refresh hand out. Times are epoch seconds."""

    access_token: str
    access_exp: float
    refresh_token: str
    refresh_exp: float
    family: str
    subject: str | None = None   # whose session (for the audit line); not sealed in a grace reply
    jkt: str | None = None       # the DPoP key (RFC 9449) both tokens are bound to, if any

    def body(self, now: float) -> dict[str, Any]:
        """The JSON answer of RFC 6749 5.1 (RFC 9449 5: token_type DPoP for bound tokens)."""
        return {"access_token": self.access_token, "token_type": "DPoP" if self.jkt else "Bearer",
                "expires_in": max(0, round(self.access_exp - now)), "refresh_token": self.refresh_token}

    def to_json(self) -> bytes:
        return json.dumps([self.access_token, self.access_exp, self.refresh_token, self.refresh_exp,
                           self.family, self.jkt]).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TokenPair:
        access_token, access_exp, refresh_token, refresh_exp, family, *jkt = json.loads(raw)
        return cls(access_token, float(access_exp), refresh_token, float(refresh_exp), family,
                   jkt=jkt[0] if jkt else None)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    """SHA-256, hex: a refresh token has 256 random bits, so no salt or slow hash is needed."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _sealing_key(token: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(
        token.encode("utf-8", "surrogatepass"))
    return AESGCM(key)


def seal(token: str, pair: TokenPair) -> bytes:
    """``pair`` encrypted (AES-GCM) under a key derived (HKDF-SHA256) from the refresh token it
    replaces: only whoever presents that token again can read it; the store never can."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _sealing_key(token).encrypt(nonce, pair.to_json(), _SEAL_INFO)


def unseal(token: str, sealed: bytes) -> TokenPair:
    """The pair ``seal(token, ...)`` made. ValueError when ``sealed`` was not sealed with ``token``."""
    if len(sealed) <= _NONCE_BYTES:
        raise ValueError("nothing was sealed")
    try:
        plain = _sealing_key(token).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _SEAL_INFO)
    except InvalidTag as exc:
        raise ValueError("the sealed reply does not open with this token") from exc
    return TokenPair.from_json(plain)



@dataclass(frozen=True, slots=True)
class Origin:
    """Where a login came from, as its session lists it: the User-Agent and the client's address."""

    user_agent: str = ""
    client: str = ""

    @classmethod
    def of(cls, user_agent: str | None, client: str) -> Origin:
        return cls(clean_user_agent(user_agent or ""), client[:MAX_USER_AGENT_CHARS])


def origin_of(request: web.Request, cfg: GatewayConfig) -> Origin:
    """Where a login comes from (its User-Agent, its client as the rate limits count it)."""
    return Origin.of(request.headers.get("User-Agent"), client_address(request, cfg.listen.trusted_proxies))


def clean_user_agent(text: str) -> str:
    """A User-Agent fit to show: control, format and unassigned characters (escape sequences, bidi
    overrides, undecodable bytes) removed, at most MAX_USER_AGENT_CHARS."""
    shown = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    return shown.strip()[:MAX_USER_AGENT_CHARS].strip()


class Sessions:
    """Refresh-token families in the store, access tokens from the Minter.

    Every method raises DependencyDown (503) when the store or the accounts cannot be reached.
    """

    def __init__(self, store: Store, minter: Minter, users: UserDirectory, denylist: Denylist,
                 tokens: TokensConfig, *, grace_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._store, self._minter, self._users, self._denylist = store, minter, users, denylist
        self._issuer = tokens.issuer
        self._access_ttl_s, self._refresh_ttl_s, self._leeway_s = tokens.access_ttl, tokens.refresh_ttl, tokens.leeway
        self._longest_s = tokens.longest_life_s
        self._access_life_s = tokens.access_ttl + tokens.leeway   # how long an access token minted now is accepted
        self._grace_s = grace_s
        self._clock = clock

    async def issue(self, user: AuthenticatedUser, kept: Mapping[str, str] | None = None,
                    origin: Origin | None = None, jkt: str | None = None) -> TokenPair:
        """A new session (a new family) for an authenticated user. ``kept``: what the session remembers
        of its login through every rotation (a delegated login's ``provider`` and ``id_token``);
        ``origin``: where the login came from (what the session list shows); ``jkt``: the DPoP key
        (RFC 9449) the session's tokens are bound to, for good."""
        pair = await self._mint_pair(user.sub, user.roles, user.email, secrets.token_urlsafe(FAMILY_ID_BYTES), jkt)
        origin, now = origin or Origin(), self._clock()
        info = SessionInfo(pair.family, now, now, origin.user_agent, origin.client,
                           (kept or {}).get("provider") or PASSWORD_METHOD)
        with store_reachable():
            await self._store.add_refresh(self._record(pair, user.sub, user.roles, user.email, kept), self._issuer,
                                          info)
        return pair

    async def list_of(self, identity: Identity) -> list[SessionInfo]:
        """The live sessions of the token's subject (of its issuer: another issuer's alice has none here)."""
        with store_reachable():
            return await self._store.list_sessions(identity.iss, identity.sub)

    async def end(self, identity: Identity, sid: str) -> bool:
        """End one session of the token's subject: its refresh tokens die and its access tokens are
        denied on every instance. False when it is not a live session of this subject."""
        with store_reachable():
            return await end_session(self._store, identity.iss, identity.sub, sid, self._access_life_s,
                                     self._denylist.revoke, self._clock())

    async def rotate(self, token: str, jkt: str | None = None) -> TokenPair:
        """The next pair for a live refresh token, which dies. Raises InvalidRefreshToken (unknown,
        expired, account gone or disabled), SessionEnded (its session was ended on purpose: logout,
        logout-all, password reset or change, a revoked subject), RefreshTokenReused (rotated before:
        the family dies).
        Within ``grace_s`` of its rotation a token gets the very pair its rotation produced. ``jkt``:
        the key of the request's DPoP proof; a bound token needs its own (InvalidDpopProof, and the
        token stays live: checked before it rotates); an unbound one with a proof becomes bound."""
        token_hash = hash_refresh_token(token)
        with store_reachable():
            record = await self._store.find_refresh(token_hash)
        if record is None:
            pair = await self._replay(token, token_hash)
            _check_same_key(pair.jkt, jkt)
            return pair
        bound = _bound_key(record.data)
        _check_same_key(bound, jkt)
        roles, email = await self._account(record)
        pair = await self._mint_pair(record.sub, roles, email, record.family, bound or jkt)
        sealed = seal(token, pair) if self._grace_s > 0 else b""
        with store_reachable():
            rotation = await self._store.rotate_refresh(token_hash, self._record(pair, record.sub, roles, email,
                                                                                 _kept(record.data)),
                                                        self._clock(), self._grace_s, sealed)
        if rotation.outcome == "ok":
            return pair
        return await self._settle(token, rotation)   # another call rotated it since we looked

    async def logout(self, identity: Identity, refresh_token: str | None) -> dict[str, str]:
        """End the session of this access token: its family (from its ``sid`` claim, or the refresh
        token when it belongs to the same subject) dies, then its jti is denied until it expires.
        Returns what the refresh token's session kept of its login (Sessions.issue), else {}."""
        families, kept = set(), {}
        sid = identity.claims.get(SESSION_CLAIM)
        if identity.iss == self._issuer and isinstance(sid, str) and sid:
            families.add(sid)
        with store_reachable():
            if refresh_token:
                record = await self._store.find_refresh(hash_refresh_token(refresh_token))
                if record is not None and record.sub == identity.sub:
                    families.add(record.family)
                    kept = _kept(record.data)
            for family in families:
                await self._store.kill_family(family)
            # Denied until exp + leeway: the verifier accepts a token that long.
            await self._denylist.revoke(Revocation("jti", identity.iss, identity.jti, value=identity.exp,
                                                   expires_at=identity.exp + self._leeway_s))
        return kept

    async def logout_all(self, identity: Identity) -> int:
        """Every family of the subject dies, and every access token it was issued before now.
        Returns how many families died."""
        now = self._clock()
        with store_reachable():
            killed = await self._store.kill_families_of(identity.iss, identity.sub)
            await self._denylist.revoke(Revocation("sub", identity.iss, identity.sub, value=now,
                                                   expires_at=now + self._longest_s))
        return killed

    async def _replay(self, token: str, token_hash: str) -> TokenPair:
        # Not live: was it rotated moments ago (grace), before that (reuse), or never issued (unknown)?
        # The probe successor is stored only on "ok", which a token that is not live cannot give.
        now = self._clock()
        probe = RefreshRecord(hash_refresh_token(new_refresh_token()), "", "", now + 1.0)
        with store_reachable():
            rotation = await self._store.rotate_refresh(token_hash, probe, now, self._grace_s)
        if rotation.outcome == "ok" and rotation.record is not None:   # never a branch nobody holds
            await self._kill(rotation.record.family)
            raise InvalidRefreshToken()
        return await self._settle(token, rotation)

    async def _settle(self, token: str, rotation: Rotation) -> TokenPair:
        if rotation.outcome == "grace" and rotation.record is not None:
            try:
                return replace(unseal(token, rotation.sealed_reply), subject=rotation.record.sub)
            except ValueError:   # no reply to repeat (an instance without grace rotated it): end it
                await self._kill(rotation.record.family, REUSED)
                raise RefreshTokenReused(subject=rotation.record.sub, session=rotation.record.family) from None
        if rotation.outcome == "ended":   # logged out, reset, revoked: a client that kept its token, no thief
            log.info("refresh token of an ended session presented",
                     extra={"sub": rotation.record.sub if rotation.record else None})
            raise SessionEnded()
        if rotation.outcome in ("reused", "grace"):
            log.warning("refresh token reused; session revoked",
                        extra={"sub": rotation.record.sub if rotation.record else None})
            record = rotation.record
            raise RefreshTokenReused(subject=record.sub if record else None, session=record.family if record else None)
        raise InvalidRefreshToken()

    async def _account(self, record: RefreshRecord) -> tuple[tuple[str, ...], str | None]:
        """Roles and email for the next access token: the account's own when the directory can be
        read (a role change or a disabled account takes effect at the next refresh), else the record's."""
        if not self._users.editable:
            return _roles_of(record.data), _email_of(record.data)
        account = await self._users.get(record.sub)
        if account is None or account.disabled:
            await self._kill(record.family)
            raise InvalidRefreshToken("the account of this session no longer exists or is disabled")
        return account.roles, account.email

    async def _kill(self, family: str, reason: EndReason = ENDED) -> None:
        with store_reachable():
            await self._store.kill_family(family, reason)

    async def _mint_pair(self, sub: str, roles: tuple[str, ...], email: str | None, family: str,
                         jkt: str | None = None) -> TokenPair:
        await self._clear_watermark(sub)
        now = self._clock()
        claims: dict[str, Any] = {SESSION_CLAIM: family, **({"email": email} if email else {})}
        if jkt is not None:
            claims["cnf"] = {BOUND_KEY: jkt}   # RFC 9449 6.1
        access_token = self._minter.mint_access_token(sub, roles, extra_claims=claims)
        return TokenPair(access_token, now + self._access_ttl_s, new_refresh_token(), now + self._refresh_ttl_s,
                         family, sub, jkt)

    async def _clear_watermark(self, sub: str) -> None:
        """Wait (at most a second) until a token minted now is not below a logout-all watermark.

        A token's iat is whole seconds; the watermark is not. A login in the same second as a
        logout-all would mint a token that is dead from birth.
        """
        for _ in range(_WATERMARK_TRIES):
            now = self._clock()
            probe = Identity(sub, frozenset(), "", self._issuer, math.inf, float(int(now)), {})
            try:
                self._denylist.check(probe)
                return
            except RevokedToken:
                await asyncio.sleep(math.floor(now) + 1.0 - now + 0.01)
            except DependencyDown:   # the mirror is out of sync: the store calls will tell
                return

    def _record(self, pair: TokenPair, sub: str, roles: tuple[str, ...], email: str | None,
                kept: Mapping[str, str] | None = None) -> RefreshRecord:
        data = {**(kept or {}), "roles": list(roles), **({"email": email} if email else {}),
                **({BOUND_KEY: pair.jkt} if pair.jkt else {})}
        return RefreshRecord(hash_refresh_token(pair.refresh_token), pair.family, sub, pair.refresh_exp, data)


async def end_session(store: Store, iss: str, sub: str, sid: str, access_life_s: float,
                      record: Callable[[Revocation], Awaitable[None]] | None = None, now: float | None = None) -> bool:
    """End one live session of ``sub`` (False when it is none: unknown, another subject's, ended):
    its ``sid`` is denied (with ``record``, e.g. a Denylist's revoke, else ``store.revoke``) for as long
    as an access token minted before now is accepted, then its family dies (a refresh then gets
    ``session_ended``). Ownership is settled first, so nobody can deny another subject's session.
    Denied before it ends: a store failure between the two steps leaves a session that is still
    listed, so asking again finishes the job, and whose tokens are refused meanwhile."""
    if not any(session.id == sid for session in await store.list_sessions(iss, sub)):
        return False
    now = time.time() if now is None else now
    await (record or store.revoke)(Revocation("sid", iss, sid, value=now, expires_at=now + access_life_s))
    await store.end_session(iss, sub, sid)   # False only when another call ended it meanwhile: ended either way
    return True


KEPT = ("provider", "id_token")   # what a session keeps of its login (Sessions.issue)


def _kept(data: Mapping[str, Any]) -> dict[str, str]:
    return {key: data[key] for key in KEPT if isinstance(data.get(key), str)}


BOUND_KEY = "jkt"   # a refresh record's DPoP key thumbprint, as cnf.jkt (RFC 9449 5: the refresh token is bound too)


def _bound_key(data: Mapping[str, Any]) -> str | None:
    jkt = data.get(BOUND_KEY)
    return jkt if isinstance(jkt, str) and jkt else None


def _check_same_key(bound: str | None, jkt: str | None) -> None:
    """A refresh token bound to a DPoP key refreshes only with a proof by that key (400)."""
    if bound is not None and bound != jkt:
        raise InvalidDpopProof("this refresh token is DPoP-bound: a proof by its key must come with it")


def _roles_of(data: Mapping[str, Any]) -> tuple[str, ...]:
    roles = data.get("roles")
    if not isinstance(roles, list):
        return ()
    return tuple(role for role in roles if isinstance(role, str) and role)


def _email_of(data: Mapping[str, Any]) -> str | None:
    email = data.get("email")
    return email if isinstance(email, str) and email else None


def sessions_of(gw: Gateway) -> Sessions:
    """The Sessions of the config in force."""
    return Sessions(gw.store, gw.minter, gw.users, gw.denylist, gw.config.tokens,
                    grace_s=gw.config.auth.refresh_grace)
