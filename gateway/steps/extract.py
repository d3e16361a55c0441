"""Step 2: request headers -> the bearer token (str), or MissingToken / InvalidToken / BadRequest.

Only the Authorization header (RFC 6750 2.1), never the query string. Browser mode's access
cookie (with its CSRF check) will be read here too, by a sibling of ``extract_bearer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import BadRequest, InvalidToken, MissingToken

AUTHORIZATION = "Authorization"
BEARER, DPOP = "bearer", "dpop"   # the schemes a token may come with (folded); DPoP: RFC 9449 7.1
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")   # RFC 6750 2.1 b64token


def extract_bearer(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive).

    No header, an empty one or another scheme (Basic ...) -> MissingToken, so the client gets the
    bare challenge; a malformed bearer value -> InvalidToken; several Authorization headers ->
    BadRequest, whatever they hold (a proxy and the gateway might each read a different one).
    """
    return check_b64token(bearer_credentials(headers))


def check_b64token(token: str) -> str:
    """``token`` when it has RFC 6750's b64token syntax, else InvalidToken."""
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("the Authorization header is malformed (expected one bearer token)")
    return token


def bearer_credentials(headers: Mapping[str, str]) -> str:
    """``extract_bearer`` without the token's syntax check, for a caller that makes it only when it
    does not know the exact string already (a verified-token cache: every token in it is a JWS)."""
    scheme, credentials = token_credentials(headers)
    if scheme != BEARER:
        raise MissingToken()
    return credentials


def token_credentials(headers: Mapping[str, str]) -> tuple[str, str]:
    """(scheme, token) of ``Authorization: Bearer <token>`` or ``Authorization: DPoP <token>``: the
    scheme folded (BEARER or DPOP), the token unchecked. Raises as ``bearer_credentials``."""
    values = _all_values(headers, AUTHORIZATION)
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if not values or not values[0].strip():
        raise MissingToken()
    scheme, _, credentials = values[0].strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in (BEARER, DPOP):
        raise MissingToken()
    return scheme, credentials.lstrip(" ")   # RFC 7235 2.1: 1*SP between scheme and credentials


def _all_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)   # multidict (aiohttp): duplicates stay visible
    if getall is not None:
        return list(getall(name, []))
    lowered = name.lower()
    return [value for key, value in headers.items() if key.lower() == lowered]
