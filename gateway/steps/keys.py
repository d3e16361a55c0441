"""Step 3's keys: our configured keys (KeyRing, SigningKey) and trusted issuers' JWKS (JwksCache).

Every key is bound to exactly one algorithm and prepared once, so a token's `alg` header can
only pick a key, never change how a key is used (no algorithm confusion, no `none`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from ..config.keyfiles import check_key_fits
from ..config.load import KeyConfig, TokensConfig, TrustedIssuerConfig
from ..errors import DependencyDown, InvalidToken
from .discovery import FetchFailed, fetch_json, fetch_metadata

log = logging.getLogger("tokengate.keys")

REFETCH_INTERVAL_S = 30.0      # an unknown kid refetches an issuer's JWKS at most this often
RETRY_AFTER_FAILURE_S = 5.0    # while an issuer has no keys at all, fetch attempts are this far apart
MAX_AGE_S = 600.0              # cached keys are refreshed after this long (stale keys serve on failure)
FETCH_TIMEOUT_S = 5.0
_ALGS_FOR_KEY_TYPE = {("RSA", None): ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
                      ("EC", "P-256"): ("ES256",), ("EC", "P-384"): ("ES384",), ("EC", "P-521"): ("ES512",),
                      ("OKP", "Ed25519"): ("EdDSA",)}   # no ("oct", ...): never an HMAC key from outside


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key, bound to one algorithm; ``key`` is already prepared for ``algorithm.verify``."""

    kid: str | None
    alg: str
    algorithm: Algorithm
    key: Any

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return self.algorithm.verify(signing_input, self.key, signature)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    algorithm: Algorithm
    key: Any

    @classmethod
    def from_config(cls, cfg: KeyConfig) -> SigningKey:
        """Prepare ``cfg``'s secret or private key. Raises ValueError for a verify-only key."""
        material = cfg.material
        raw = material.secret if material.secret is not None else material.private
        if raw is None:
            raise ValueError(f"key {cfg.kid!r} has only a public key; it cannot sign")
        algorithm = get_default_algorithms()[cfg.alg]
        return cls(cfg.kid, cfg.alg, algorithm, _prepare(algorithm, raw, cfg.kid))

    def sign(self, signing_input: bytes) -> bytes:
        return self.algorithm.sign(signing_input, self.key)


def _prepare(algorithm: Algorithm, raw: Any, kid: str) -> Any:
    try:
        return algorithm.prepare_key(raw)
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"key {kid!r} cannot be used: {exc}") from exc


class KeySet:
    """Keys indexed for DESIGN.md's rule: `kid` names the key and `alg` must be that key's
    algorithm; without `kid`, the one key of that algorithm when there is exactly one."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._by_kid: dict[tuple[str, str], VerificationKey] = {}
        self._kids: set[str] = set()
        per_alg: dict[str, list[VerificationKey]] = {}
        for key in keys:
            if key.kid is not None:
                self._by_kid.setdefault((key.kid, key.alg), key)
                self._kids.add(key.kid)
            per_alg.setdefault(key.alg, []).append(key)
        self._sole = {alg: found[0] for alg, found in per_alg.items() if len(found) == 1}
        self.algorithms = frozenset(per_alg)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        if kid is None:
            return self._sole.get(alg)
        return self._by_kid.get((kid, alg))

    def select(self, kid: str | None, alg: str) -> VerificationKey:
        """The key for this header, or InvalidToken saying why there is none."""
        key = self.find(kid, alg)
        if key is not None:
            return key
        if kid is None:
            raise InvalidToken("the token names no key (kid) and no single key of its algorithm exists")
        if kid in self._kids:
            raise InvalidToken("the token's algorithm does not match its key")
        raise InvalidToken("the token was signed with an unknown key")


class KeyRing(KeySet):
    """Our own keys (tokens.keys), prepared once for verification, plus their public JWKS."""

    def __init__(self, keys: Sequence[VerificationKey], public_jwks: Sequence[dict[str, Any]]) -> None:
        super().__init__(keys)
        self._public_jwks = tuple(public_jwks)

    @classmethod
    def from_config(cls, cfg: TokensConfig) -> KeyRing:
        algorithms = get_default_algorithms()
        keys, jwks = [], []
        for key_cfg in cfg.keys:
            material, algorithm = key_cfg.material, algorithms[key_cfg.alg]
            raw = material.secret if material.secret is not None else material.public
            keys.append(VerificationKey(key_cfg.kid, key_cfg.alg, algorithm,
                                        _prepare(algorithm, raw, key_cfg.kid)))
            if material.public is not None:   # HMAC secrets never leave the process
                jwks.append(_public_jwk(key_cfg.kid, key_cfg.alg, algorithm, material.public))
        return cls(keys, jwks)

    def public_jwks(self) -> dict[str, Any]:
        """RFC 7517 JWK Set of our public keys (a fresh copy each call)."""
        return {"keys": [dict(jwk) for jwk in self._public_jwks]}


def _public_jwk(kid: str, alg: str, algorithm: Algorithm, public: Any) -> dict[str, Any]:
    jwk = dict(algorithm.to_jwk(public, as_dict=True))
    jwk.pop("key_ops", None)   # RFC 7517 4.3: use and key_ops should not appear together
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class JwksFetchFailed(Exception):
    """A JWKS document could not be fetched or held no usable key (internal to steps/keys.py)."""


@dataclass
class _IssuerKeys:
    cfg: TrustedIssuerConfig
    keys: KeySet | None = None
    attempted_at: float = -math.inf
    fetched_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksCache:
    """Trusted issuers' public keys, fetched from their jwks_uri (or the one their discovery document
    names) with aiohttp and cached.

    An unknown kid refetches at most once per ``refetch_interval_s`` per issuer, then the token
    is refused. Pass the app's ClientSession; without one, the cache opens (and closes) its own.
    """

    def __init__(self, issuers: Sequence[TrustedIssuerConfig], session: aiohttp.ClientSession | None = None,
                 *, refetch_interval_s: float | None = None, retry_s: float = RETRY_AFTER_FAILURE_S,
                 max_age_s: float = MAX_AGE_S, timeout_s: float = FETCH_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._issuers = {cfg.issuer: _IssuerKeys(cfg) for cfg in issuers}
        self._session = session
        self._owns_session = session is None
        # None: the module's REFETCH_INTERVAL_S, read now (tests of a provider's key rotation lower it).
        self._refetch_interval_s = REFETCH_INTERVAL_S if refetch_interval_s is None else refetch_interval_s
        self._retry_s, self._max_age_s = retry_s, max_age_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._listeners: list[Callable[[str], object]] = []

    def add_listener(self, listener: Callable[[str], object]) -> None:
        """Called with the issuer's name whenever its keys are replaced (a key may have gone)."""
        self._listeners.append(listener)

    async def select(self, issuer: str, kid: str | None, alg: str) -> VerificationKey:
        """The issuer's key for this header. Raises InvalidToken, or DependencyDown when the
        issuer's keys were never fetched and cannot be fetched now."""
        state = self._issuers[issuer]
        refreshed = self._is_stale(state)
        if refreshed:
            await self._refresh(state)   # on failure, stale keys keep serving
        if state.keys is None:
            raise DependencyDown("the token issuer's signing keys cannot be fetched")
        key = state.keys.find(kid, alg)
        if key is None and not refreshed and self._elapsed(state.attempted_at) >= self._refetch_interval_s:
            await self._refresh(state)   # the issuer may have rotated its keys
            key = state.keys.find(kid, alg)
        return key if key is not None else state.keys.select(kid, alg)

    def __contains__(self, issuer: object) -> bool:
        return issuer in self._issuers

    def fresh_for_s(self, issuer: str) -> float:
        """How long until the issuer's keys are due for a refresh (what a cache of verified tokens
        must not outlive: the refresh may remove the key that verified them)."""
        return max(0.0, self._max_age_s - self._elapsed(self._issuers[issuer].fetched_at))

    async def prefetch(self) -> None:
        """Fetch every issuer's keys once (at startup); failures are logged, not raised."""
        await asyncio.gather(*(self._refresh(state) for state in self._issuers.values()))

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _elapsed(self, since: float) -> float:
        return self._clock() - since

    def _is_stale(self, state: _IssuerKeys) -> bool:
        if self._elapsed(state.attempted_at) < self._retry_s:
            return False
        return state.keys is None or self._elapsed(state.fetched_at) >= self._max_age_s

    async def _refresh(self, state: _IssuerKeys) -> None:
        seen = state.attempted_at
        async with state.lock:
            if state.attempted_at != seen:
                return   # another request fetched while this one waited
            state.attempted_at = self._clock()
            try:
                keys = await self._fetch(state.cfg)
            except JwksFetchFailed as exc:
                log.warning("jwks fetch failed", extra={"issuer": state.cfg.issuer, "reason": str(exc)})
                return
            replaced, state.keys, state.fetched_at = state.keys is not None, keys, state.attempted_at
            if replaced:
                for listener in self._listeners:
                    listener(state.cfg.issuer)

    async def _fetch(self, cfg: TrustedIssuerConfig) -> KeySet:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            jwks_uri = cfg.jwks_uri
            # Discovery is looked up again at each refresh, so a jwks_uri that moved is found.
            if cfg.metadata_url is not None:
                metadata = await fetch_metadata(self._session, cfg.metadata_url, cfg.issuer)
                if metadata.jwks_uri is None:
                    raise JwksFetchFailed("the discovery document has no jwks_uri")
                jwks_uri = metadata.jwks_uri
            assert jwks_uri is not None   # the config requires one of the two
            document = await fetch_json(self._session, jwks_uri, timeout_s=self._timeout_s)
        except FetchFailed as exc:
            raise JwksFetchFailed(str(exc)) from exc
        return keyset_from_jwks(document, frozenset(cfg.algorithms))


def keyset_from_jwks(document: Any, allowed: frozenset[str]) -> KeySet:
    """A trusted issuer's JWK Set -> KeySet of the keys usable with ``allowed`` algorithms.

    HMAC (`kty: oct`) keys, encryption keys, private keys and weak keys are skipped; a key
    without `alg` is bound to each allowed algorithm its type fits. Raises JwksFetchFailed."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchFailed("not a JWK Set")
    candidates = [c for jwk in document["keys"] if isinstance(jwk, dict) for c in _candidates(jwk, allowed)]
    try:
        jwk_set = jwt.PyJWKSet.from_dict({"keys": candidates})
    except jwt.PyJWTError as exc:
        raise JwksFetchFailed(f"no usable key: {exc}") from exc
    keys = [key for key in map(_verification_key, jwk_set) if key is not None]
    if not keys:
        raise JwksFetchFailed("no usable key")
    return KeySet(keys)


def _candidates(jwk: dict[str, Any], allowed: frozenset[str]) -> list[dict[str, Any]]:
    kid, ops = jwk.get("kid"), jwk.get("key_ops")
    if jwk.get("use", "sig") != "sig" or (kid is not None and not isinstance(kid, str)):
        return []
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return []
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if not isinstance(kty, str) or not isinstance(crv, (str, type(None))):
        return []
    key_type = (kty, None if kty == "RSA" else crv)
    fits = [alg for alg in _ALGS_FOR_KEY_TYPE.get(key_type, ()) if alg in allowed]
    if "alg" in jwk:
        return [jwk] if jwk["alg"] in fits else []
    return [{**jwk, "alg": alg} for alg in fits]


def _verification_key(jwk: jwt.PyJWK) -> VerificationKey | None:
    try:
        check_key_fits(jwk.algorithm_name, jwk.key)   # also refuses private keys and small RSA keys
        prepared = jwk.Algorithm.prepare_key(jwk.key)
    except (ValueError, jwt.PyJWTError) as exc:
        log.warning("jwks key skipped", extra={"kid": jwk.key_id, "reason": str(exc)})
        return None
    return VerificationKey(jwk.key_id, jwk.algorithm_name, jwk.Algorithm, prepared)
