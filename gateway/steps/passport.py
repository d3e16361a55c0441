"""Identity -> the headers upstreams receive (identity.headers, claims_header, assertion_header).

Upstreams hold no auth state: these headers are all they know about the caller, so every
value is checked to be a clean header value and nothing here ever comes from the client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.load import GatewayConfig
from ..errors import InvalidToken
from .identity import Identity
from .tokencache import CachedToken
from .tokens import Minter

_EMPTY: Mapping[str, str] = {}


@dataclass(frozen=True)
class Passport:
    """Builds the identity headers for one verified caller and one upstream."""

    claim_headers: tuple[tuple[str, str], ...]   # (claim name, header name)
    roles_claim: str
    claims_header: str | None
    assertion_header: str | None
    minter: Minter | None
    anonymous = _EMPTY                           # public routes: no identity at all

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Passport:
        ident = cfg.identity
        needs_minter = ident.assertion_header is not None
        return cls(
            claim_headers=tuple(ident.headers.items()),
            roles_claim=ident.roles_claim,
            claims_header=ident.claims_header,
            assertion_header=ident.assertion_header,
            minter=Minter(cfg.tokens, cfg.identity) if needs_minter else None,
        )

    def cached_headers_for(self, known: CachedToken, upstream: str) -> Mapping[str, str]:
        """``headers_for``, built once per cached token and upstream; the assertion header, a
        fresh short-lived JWT, is never reused."""
        if self.assertion_header is not None:
            return self.headers_for(known.identity, upstream)
        headers = known.headers.get(upstream)
        if headers is None:
            headers = known.headers[upstream] = self.headers_for(known.identity, upstream)
        return headers

    def headers_for(self, identity: Identity, upstream: str) -> dict[str, str]:
        """Raises InvalidToken when a claim cannot be carried safely in a header."""
        out: dict[str, str] = {}
        for claim, header in self.claim_headers:
            if claim == "roles" or claim == self.roles_claim:
                value: Any = ",".join(sorted(identity.roles))
            elif claim == "sub":   # the identity's subject: a trusted issuer's subject_prefix applies
                value = identity.sub
            else:
                value = identity.claims.get(claim)
            if value is None:
                continue
            out[header] = header_value(claim, value)
        if self.claims_header is not None:
            blob = json.dumps(dict(identity.claims), separators=(",", ":"), sort_keys=True).encode()
            out[self.claims_header] = base64.urlsafe_b64encode(blob).rstrip(b"=").decode()
        if self.minter is not None and self.assertion_header is not None:
            out[self.assertion_header] = self.minter.mint_assertion(identity, upstream)
        return out


def header_value(claim: str, value: Any) -> str:
    """A claim as one header value: strings as they are, lists comma-joined, the rest as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ",".join(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    # A CR, LF or other control character would let a token's claim inject headers upstream.
    if not text.isprintable():
        raise InvalidToken(f"the {claim} claim holds characters that cannot be sent in a header")
    return text
