"""The catch-all handler: a proxied request's whole life, one step per line.

``Gateway`` bundles the prepared steps (rules, verifier, identity headers, forwarder); it is
built once from the config by app.py and found on the app under ``GATEWAY``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from .authorize import authorize
from .config import GatewayConfig
from .errors import MethodRefused
from .extract import extract_bearer
from .forward import Forwarder
from .keys import KeyRing
from .passport import Passport
from .paths import normalise
from .rules import RuleSet
from .verify import Verifier


@dataclass
class Gateway:
    """Everything a request needs, built once from the config."""

    config: GatewayConfig
    rules: RuleSet
    verifier: Verifier
    passport: Passport
    forwarder: Forwarder
    jwks_body: bytes

    @classmethod
    def build(cls, cfg: GatewayConfig) -> Gateway:
        keyring = KeyRing.from_config(cfg.tokens)
        return cls(
            config=cfg,
            rules=RuleSet.compile(cfg.routes),
            verifier=Verifier(cfg.tokens, cfg.identity, keyring=keyring),
            passport=Passport.from_config(cfg),
            forwarder=Forwarder(cfg),
            jwks_body=json.dumps(keyring.public_jwks()).encode(),
        )

    async def close(self) -> None:
        await self.forwarder.close()
        await self.verifier.close()


GATEWAY = web.AppKey("gateway", Gateway)
# TRACE reflects the request (identity headers included) back to the caller; CONNECT opens a tunnel.
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    if request.method in REFUSED_METHODS:
        raise MethodRefused(headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"})
    path = normalise(request.raw_path.partition("?")[0])      # BadPath -> 400
    rule = gw.rules.match(request.method, path)                # NoRoute -> 404
    headers, identity = gw.passport.anonymous, None
    if not rule.public:
        token = extract_bearer(request.headers)                # MissingToken, BadRequest -> 401, 400
        identity = await gw.verifier.verify(token)             # InvalidToken -> 401
        authorize(rule, identity)                              # Forbidden -> 403
        headers = gw.passport.headers_for(identity, rule.upstream)
    return await gw.forwarder.forward(request, path, rule.upstream, headers, identity)   # UpstreamFailed -> 502/504
