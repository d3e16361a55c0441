"""OpenID Provider metadata (OpenID Connect Discovery 1.0, RFC 8414): fetched with aiohttp, checked,
and handed out as a ProviderMetadata; the JWKS of trusted issuers and the endpoints of delegated login
come from it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config.providers import secure_url

FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1 << 20


class FetchFailed(Exception):
    """A provider document could not be fetched, or is not what it must be; the message says why."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What the gateway uses of a discovery document."""

    issuer: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    jwks_uri: str | None
    end_session_endpoint: str | None = None
    code_challenge_methods: tuple[str, ...] = ()
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)   # RFC 8414's default
    iss_parameter_supported: bool = False   # RFC 9207: the authorization response carries `iss`
    id_token_algs: tuple[str, ...] = ("RS256",)

    @classmethod
    def from_document(cls, document: Any, expected_issuer: str | None) -> ProviderMetadata:
        """Checks of Discovery 4.3: ``issuer`` equals the one asked for (else an attacker's document
        could send logins, and their keys, elsewhere); every endpoint is https (http on loopback)."""
        if not isinstance(document, dict):
            raise FetchFailed("the discovery document is not a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or (expected_issuer is not None and issuer != expected_issuer):
            raise FetchFailed("the discovery document names another issuer")
        urls = {name: _url(document, name) for name in ("authorization_endpoint", "token_endpoint", "jwks_uri",
                                                         "end_session_endpoint")}
        return cls(issuer=issuer, **urls,
                   code_challenge_methods=_strings(document, "code_challenge_methods_supported", ()),
                   token_auth_methods=_strings(document, "token_endpoint_auth_methods_supported",
                                               ("client_secret_basic",)),
                   iss_parameter_supported=document.get("authorization_response_iss_parameter_supported") is True,
                   id_token_algs=_strings(document, "id_token_signing_alg_values_supported", ("RS256",)))


def _url(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FetchFailed(f"{name} in the discovery document is not a string")
    try:
        return secure_url(value)
    except ValueError as exc:
        raise FetchFailed(f"{name} in the discovery document {exc}") from None


def _strings(document: dict[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = document.get(name)
    if not isinstance(value, list):
        return default
    return tuple(item for item in value if isinstance(item, str))


async def fetch_json(session: aiohttp.ClientSession, url: str, *, timeout_s: float = FETCH_TIMEOUT_S,
                     headers: dict[str, str] | None = None) -> Any:
    """GET ``url`` -> its JSON body (at most 1 MiB). Raises FetchFailed."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False,
                               headers={"Accept": "application/json", **(headers or {})}) as resp:
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status}")
            return json.loads(await read_capped(resp))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RecursionError) as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The whole body, or FetchFailed when it is longer than ``limit``."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise FetchFailed("the document is too large")
    return bytes(body)


async def fetch_metadata(session: aiohttp.ClientSession, url: str, expected_issuer: str | None) -> ProviderMetadata:
    """The discovery document at ``url``, checked. Raises FetchFailed."""
    return ProviderMetadata.from_document(await fetch_json(session, url), expected_issuer)
