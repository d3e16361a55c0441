"""The catch-all handler: a proxied request's whole life, one step per line.

``Gateway`` bundles the prepared steps (rules, verifier, identity headers, forwarder); it is
built once from the config by app.py and found on the app under ``GATEWAY``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from .authorize import authorize
from .config import GatewayConfig
from .denylist import Denylist
from .errors import MethodRefused
from .cookies import extract_access_token
from .forward import Forwarder
from .keys import KeyRing
from .mail import Mailer
from .passport import Passport
from .passwords import PasswordHasher
from .paths import normalise
from .rules import RuleSet
from .store import open_store
from .store.base import Store
from .tokens import Minter
from .users import UserDirectory, build_directory
from .verify import Verifier

log = logging.getLogger("tokengate")


@dataclass
class Gateway:
    """Everything a request needs, built once from the config (``await Gateway.open(cfg)``)."""

    config: GatewayConfig
    rules: RuleSet
    verifier: Verifier
    passport: Passport
    forwarder: Forwarder
    jwks_body: bytes
    store: Store
    denylist: Denylist
    minter: Minter
    hasher: PasswordHasher
    users: UserDirectory
    mailer: Mailer

    @classmethod
    async def open(cls, cfg: GatewayConfig) -> Gateway:
        """Never fails for a store that is down: the denylist keeps trying (and on_error decides)."""
        keyring = KeyRing.from_config(cfg.tokens)
        store = await open_store(cfg.store)
        if cfg.store.url.startswith("memory://"):
            log.warning("store is memory://: revocations, refresh sessions and accounts kept in the store "
                        "live in this process only and die with it; use Redis for a fleet or restarts")
        hasher = PasswordHasher()
        forwarder = Forwarder(cfg)
        denylist = Denylist(store, fail_open=cfg.store.on_error == "allow")
        denylist.add_listener(forwarder.watcher.revoke)   # revoked tokens' WebSockets and streams end too
        gw = cls(config=cfg, rules=RuleSet.compile(cfg.routes), verifier=Verifier(cfg.tokens, cfg.identity,
                 keyring=keyring), passport=Passport.from_config(cfg), forwarder=forwarder,
                 jwks_body=json.dumps(keyring.public_jwks()).encode(), store=store, denylist=denylist,
                 minter=Minter(cfg.tokens, cfg.identity), hasher=hasher,
                 users=build_directory(cfg, store, hasher), mailer=Mailer(cfg.auth.mail))
        await denylist.start()
        return gw

    @property
    def ready(self) -> bool:
        return self.denylist.in_sync

    async def close(self) -> None:
        await self.mailer.close()   # bounded: queued mails get a few seconds to go out
        await self.denylist.close()
        await self.forwarder.close()
        await self.verifier.close()
        await self.users.close()
        self.hasher.close()
        await self.store.close()


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
        token = extract_access_token(request, gw.config)       # MissingToken, BadRequest, CsrfFailed
        identity = await gw.verifier.verify(token)             # InvalidToken -> 401
        gw.denylist.check(identity)                            # RevokedToken -> 401, DependencyDown -> 503
        authorize(rule, identity)                              # Forbidden -> 403
        headers = gw.passport.headers_for(identity, rule.upstream)
    return await gw.forwarder.forward(request, path, rule.upstream, headers, identity)   # UpstreamFailed -> 502/504
