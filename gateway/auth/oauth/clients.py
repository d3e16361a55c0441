"""The gateway as an OAuth 2.0 client of one provider: the authorization URL a login starts at, and the
callback's checks after the state (RFC 9207 ``iss``, the code exchange with the PKCE verifier, the ID
token) -> ProviderUser. OidcClient for OpenID Providers (by discovery), GithubClient for GitHub.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt

from ...config.load import GithubProviderConfig, OidcProviderConfig, TrustedIssuerConfig
from ...errors import BrowserLoginFailed, DependencyDown, InvalidToken
from ...steps.discovery import FetchFailed, ProviderMetadata, fetch_json, fetch_metadata, read_capped
from ...steps.keys import JwksCache
from .pending import PendingLogin

log = logging.getLogger("tokengate.oauth")

METADATA_MAX_AGE_S = 600.0     # the discovery document is fetched again after this long (stale on failure)
METADATA_RETRY_S = 5.0         # while it was never fetched, attempts are this far apart
EXCHANGE_TIMEOUT_S = 10.0
# An ID token comes from the token endpoint the gateway called itself, never from whoever sends a request:
# an unknown kid in it means the provider rotated its keys, so its JWKS is fetched again at once (a
# trusted issuer's bearer tokens wait keys.REFETCH_INTERVAL_S between refetches, against kid sprays).
ID_TOKEN_KEYS_REFETCH_S = 0.0
ID_TOKEN_ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")   # asymmetric only: never a shared-secret HMAC
_ERRORS = {"access_denied": "you (or the provider) declined the sign-in",
           "login_required": "the provider asks you to sign in first",
           "consent_required": "the provider needs your consent first",
           "interaction_required": "the provider needs you to do something first",
           "temporarily_unavailable": "the provider is temporarily unavailable",
           "server_error": "the provider had an error"}


@dataclass(frozen=True, slots=True)
class ProviderUser:
    """Who the provider says signed in."""

    subject: str                     # the provider's `sub` (GitHub: the user's numeric id)
    email: str | None
    email_verified: bool
    claims: Mapping[str, Any]        # what roles are mapped from
    id_token: str | None = None      # kept for RP-initiated logout's id_token_hint


def refused(code: str, description: str) -> BrowserLoginFailed:
    return BrowserLoginFailed(code, description, 401)


def provider_error(params: Mapping[str, str]) -> BrowserLoginFailed:
    """The authorization response carried `error` (RFC 6749 4.1.2.1): named in words, the provider's own
    description left out (it is the provider's text, not ours)."""
    error = params.get("error", "")
    words = _ERRORS.get(error, "the provider refused the sign-in")
    return refused("provider_error", f"The sign-in was not completed: {words}.")


@dataclass
class _MetadataCache:
    url: str
    issuer: str
    value: ProviderMetadata | None = None
    fetched_at: float = -1e18
    attempted_at: float = -1e18
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OidcClient:
    """One OpenID Provider: metadata by discovery (cached; stale metadata serves while the provider
    cannot be reached), its keys in a JwksCache that refetches on an unknown kid."""

    def __init__(self, name: str, cfg: OidcProviderConfig, session: aiohttp.ClientSession, *, leeway_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.name, self.cfg, self._session, self._leeway_s, self._clock = name, cfg, session, leeway_s, clock
        self._metadata = _MetadataCache(cfg.discovery_url, cfg.issuer)
        trusted = TrustedIssuerConfig(issuer=cfg.issuer, algorithms=ID_TOKEN_ALGS)
        self._keys = JwksCache([trusted], session, refetch_interval_s=ID_TOKEN_KEYS_REFETCH_S)

    async def close(self) -> None:
        await self._keys.close()

    async def metadata(self) -> ProviderMetadata:
        """Raises BrowserLoginFailed (503) when it was never fetched and cannot be fetched now."""
        cache, now = self._metadata, time.monotonic()
        if cache.value is None or now - cache.fetched_at >= METADATA_MAX_AGE_S:
            if now - cache.attempted_at >= (METADATA_RETRY_S if cache.value is None else 0):
                await self._refresh_metadata(cache)
        if cache.value is None:
            raise BrowserLoginFailed("provider_unreachable", "The sign-in provider cannot be reached right now. "
                                     "Please try again in a moment.", 503)
        return cache.value

    async def _refresh_metadata(self, cache: _MetadataCache) -> None:
        seen = cache.attempted_at
        async with cache.lock:
            if cache.attempted_at != seen:
                return   # another request fetched it while this one waited
            cache.attempted_at = time.monotonic()
            try:
                cache.value = await fetch_metadata(self._session, cache.url, cache.issuer)
                cache.fetched_at = cache.attempted_at
            except FetchFailed as exc:
                log.warning("provider discovery failed", extra={"provider": self.name, "reason": str(exc)})

    async def authorization_url(self, pending: PendingLogin) -> str:
        metadata = await self.metadata()
        if metadata.authorization_endpoint is None or metadata.token_endpoint is None:
            raise BrowserLoginFailed("provider_misconfigured", "The sign-in provider does not offer the "
                                     "authorization code flow.", 503)
        if self.cfg.client_auth not in metadata.token_auth_methods:
            # Found before the browser leaves: a code the provider would refuse to hand over is no login.
            log.warning("provider does not accept the configured client_auth",
                        extra={"provider": self.name, "client_auth": self.cfg.client_auth,
                               "accepted": list(metadata.token_auth_methods)})
            raise BrowserLoginFailed("client_auth_unsupported", "The sign-in provider does not accept the way "
                                     "this gateway identifies itself; an operator has to change its client_auth.",
                                     503)
        # PKCE S256 always, even when the metadata does not list it: never a downgrade to plain or none.
        params = {"response_type": "code", "client_id": self.cfg.client_id, "redirect_uri": pending.redirect_uri,
                  "scope": " ".join(self.cfg.scopes), "state": pending.state, "nonce": pending.nonce,
                  "code_challenge": pending.challenge, "code_challenge_method": "S256"}
        return with_query(metadata.authorization_endpoint, params)

    async def finish(self, pending: PendingLogin, params: Mapping[str, str]) -> ProviderUser:
        """After the state: ``iss`` (RFC 9207), the provider's error, the code exchange, the ID token."""
        metadata = await self.metadata()
        iss = params.get("iss")
        if iss is not None and not hmac.compare_digest(iss.encode(), metadata.issuer.encode()):
            raise refused("issuer_mismatch", "The answer came from another provider than the one the sign-in "
                                             "started with.")
        if iss is None and metadata.iss_parameter_supported:
            raise refused("issuer_missing", "The provider's answer does not say who sent it.")
        if "error" in params:
            raise provider_error(params)
        code = params.get("code")
        if not code:
            raise refused("code_missing", "The provider's answer carries no authorization code.")
        assert metadata.token_endpoint is not None   # authorization_url checked it
        answer = await exchange_code(self._session, metadata.token_endpoint, self.cfg, code, pending, self.name)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise refused("id_token_missing", "The provider did not send an ID token.")
        claims = await self._verify_id_token(id_token, metadata, pending)
        email = claims.get("email")
        return ProviderUser(subject=claims["sub"], email=email if isinstance(email, str) and email else None,
                            email_verified=claims.get("email_verified") is True, claims=claims, id_token=id_token)

    async def _verify_id_token(self, id_token: str, metadata: ProviderMetadata, pending: PendingLogin
                               ) -> dict[str, Any]:
        """OpenID Connect Core 3.1.3.7: signature by the provider's keys, iss, aud, azp, exp, iat, nonce."""
        try:
            header = jwt.get_unverified_header(id_token)
            alg, kid = header.get("alg"), header.get("kid")
            if alg not in ID_TOKEN_ALGS or not (kid is None or isinstance(kid, str)):
                raise InvalidToken("the ID token's algorithm is not allowed")
            key = await self._keys.select(self.cfg.issuer, kid, alg)
            claims = jwt.decode(id_token, key.key, algorithms=[alg], audience=self.cfg.client_id,
                                issuer=metadata.issuer, leeway=self._leeway_s,
                                options={"require": ["iss", "aud", "sub", "exp", "iat"]})
        except DependencyDown:
            raise BrowserLoginFailed("provider_unreachable", "The sign-in provider's keys cannot be fetched "
                                     "right now. Please try again in a moment.", 503) from None
        except (InvalidToken, jwt.PyJWTError) as exc:
            # The error's class, never its text: no part of the token is ever written out.
            log.info("id token refused", extra={"provider": self.name, "reason": type(exc).__name__})
            raise refused("id_token_invalid", "The provider's ID token is not valid.") from None
        _check_id_token_claims(claims, self.cfg.client_id, pending, self._clock(), self._leeway_s)
        return claims


def _check_id_token_claims(claims: dict[str, Any], client_id: str, pending: PendingLogin, now: float,
                           leeway_s: float) -> None:
    aud = claims["aud"]
    azp = claims.get("azp")
    if (isinstance(aud, list) and len(aud) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise refused("id_token_invalid", "The provider's ID token was issued to another client.")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
        raise refused("nonce_mismatch", "The provider's ID token belongs to another sign-in.")
    started = pending.expires_at - 600
    if not isinstance(claims["iat"], (int, float)) or claims["iat"] < started - leeway_s:
        raise refused("id_token_invalid", "The provider's ID token is older than this sign-in.")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise refused("id_token_invalid", "The provider's ID token names no user.")


async def exchange_code(session: aiohttp.ClientSession, token_endpoint: str,
                        cfg: OidcProviderConfig | GithubProviderConfig, code: str, pending: PendingLogin,
                        provider: str) -> dict[str, Any]:
    """RFC 6749 4.1.3 with the PKCE verifier (RFC 7636 4.5): the token endpoint's JSON answer."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.verifier}
    headers = {"Accept": "application/json"}
    secret = cfg.client_secret.get_secret_value() if cfg.client_secret is not None else ""
    if cfg.client_auth == "client_secret_basic":   # RFC 6749 2.3.1: each part form-encoded first
        pair = f"{quote(cfg.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form["client_id"] = cfg.client_id
        if cfg.client_auth == "client_secret_post":
            form["client_secret"] = secret
    try:
        async with session.post(token_endpoint, data=form, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT_S)) as resp:
            body = await read_capped(resp)
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, FetchFailed) as exc:
        log.warning("code exchange failed", extra={"provider": provider, "reason": type(exc).__name__})
        raise BrowserLoginFailed("provider_unreachable", "The sign-in provider cannot be reached right now. "
                                 "Please try again in a moment.", 503) from None
    answer = _json_object(body)
    if status != 200 or answer is None or "error" in answer:
        error = answer.get("error") if answer else None
        log.info("code exchange refused", extra={"provider": provider, "status": status,
                                                 "reason": error if isinstance(error, str) else None})
        raise refused("exchange_failed", "The provider did not accept the sign-in's authorization code.")
    return answer


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def with_query(url: str, params: Mapping[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params, quote_via=quote)


class GithubClient:
    """GitHub's OAuth app flow (no OpenID Connect): fixed endpoints under ``url``; the user from
    ``{api_url}/user`` and, for the e-mail address, ``{api_url}/user/emails`` (verified primary only)."""

    def __init__(self, name: str, cfg: GithubProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name, self.cfg, self._session = name, cfg, session
        base = cfg.url.rstrip("/")
        self._authorize, self._token = f"{base}/login/oauth/authorize", f"{base}/login/oauth/access_token"
        self._api = cfg.api_url.rstrip("/")

    async def close(self) -> None:
        pass

    async def metadata(self) -> ProviderMetadata:
        return ProviderMetadata(issuer=self.cfg.issuer, authorization_endpoint=self._authorize,
                                token_endpoint=self._token, jwks_uri=None)

    async def authorization_url(self, pending: PendingLogin) -> str:
        params = {"client_id": self.cfg.client_id, "redirect_uri": pending.redirect_uri,
                  "scope": " ".join(self.cfg.scopes), "state": pending.state, "code_challenge": pending.challenge,
                  "code_challenge_method": "S256", "allow_signup": "false"}
        return with_query(self._authorize, params)

    async def finish(self, pending: PendingLogin, params: Mapping[str, str]) -> ProviderUser:
        if "error" in params:
            raise provider_error(params)
        code = params.get("code")
        if not code:
            raise refused("code_missing", "The provider's answer carries no authorization code.")
        answer = await exchange_code(self._session, self._token, self.cfg, code, pending, self.name)
        access_token = answer.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise refused("exchange_failed", "The provider did not send an access token.")
        user = await self._api_get("/user", access_token)
        if not isinstance(user, dict) or not isinstance(user.get("id"), int) or isinstance(user.get("id"), bool):
            raise refused("userinfo_failed", "The provider did not say who signed in.")
        # The list is paginated, 30 a page by default, and GitHub does not say where the primary comes: ask
        # for the largest page (100) so an account with many addresses does not lose its primary.
        email = _verified_primary(await self._api_get("/user/emails?per_page=100", access_token))
        # Role maps match strings: integers (the id above all, which unlike the login never passes to another
        # person) are given as their decimal text so that `claim: id` can map them.
        claims = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                  for k, v in user.items() if isinstance(v, (str, int, bool))}
        return ProviderUser(subject=str(user["id"]), email=email, email_verified=email is not None, claims=claims)

    async def _api_get(self, path: str, access_token: str) -> Any:
        try:
            return await fetch_json(self._session, self._api + path, timeout_s=EXCHANGE_TIMEOUT_S,
                                    headers={"Authorization": f"Bearer {access_token}",
                                             "Accept": "application/vnd.github+json",
                                             "X-GitHub-Api-Version": "2022-11-28"})
        except FetchFailed as exc:
            log.warning("github api call failed", extra={"provider": self.name, "path": path, "reason": str(exc)})
            raise refused("userinfo_failed", "The provider did not say who signed in.") from None


def _verified_primary(emails: Any) -> str | None:
    """The primary address when GitHub marks it verified; any other address is never used."""
    if not isinstance(emails, list):
        return None
    for entry in emails:
        if isinstance(entry, dict) and entry.get("primary") is True and entry.get("verified") is True:
            email = entry.get("email")
            return email if isinstance(email, str) and email else None
    return None


ProviderClient = OidcClient | GithubClient
