"""The catch-all handler: a proxied request's whole life, one step per line.

``Gateway`` bundles the prepared steps (rules, verifier, identity headers, forwarder); it is
built once from the config by server/app.py and found on the app under ``GATEWAY``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .answers import answer_for
from .auth.accounts.directory import UserDirectory, build_directory
from .auth.accounts.mail import Mailer
from .auth.accounts.passwords import PasswordHasher
from .config.load import GatewayConfig
from .config.rules import RuleSet
from .errors import Handler, MethodRefused
from .forward.client_cert import client_certificate
from .forward.dpop_request import DPOP_ALGS, RENEWED_NONCE, DpopGuard
from .forward.forwarder import Forwarder
from .forward.lifetime import ConnectionWatcher
from .forward.request_body import check_expectation
from .forward.request_id import REQUEST_ID
from .logs import ACCESS_NOTE, AccessLog, AccessNote
from .metrics import METRICS
from .paths import normalise
from .steps.authorize import authorize
from .steps.binding import CNF, check_certificate_binding
from .steps.cookies import extract_presented_token
from .steps.denylist import Denylist
from .steps.extract import BEARER
from .steps.keys import KeyRing
from .steps.passport import Passport
from .steps.tokencache import Authenticator, TokenCache
from .steps.tokens import Minter
from .steps.verify import Verifier
from .store import open_store
from .store.base import Store

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
    authenticator: Authenticator
    dpop: DpopGuard
    retiring: set[asyncio.Task[None]] = field(default_factory=set)   # what a reload replaced, closing

    @classmethod
    async def open(cls, cfg: GatewayConfig) -> Gateway:
        """Never fails for a store that is down: the denylist keeps trying (and on_error decides)."""
        store = await open_store(cfg.store)
        if cfg.store.url.startswith("memory://"):
            log.warning("store is memory://: revocations, refresh sessions and accounts kept in the store "
                        "live in this process only and die with it; use Redis for a fleet or restarts")
        hasher = PasswordHasher()
        denylist = Denylist(store, fail_open=cfg.store.on_error == "allow")
        watcher = ConnectionWatcher(leeway_s=cfg.tokens.leeway)
        denylist.add_listener(watcher.revoke)   # revoked tokens' WebSockets and streams end too
        try:
            parts = _from_config(cfg, store, denylist, watcher)
        except BaseException:
            hasher.close()
            await store.close()
            raise
        gw = cls(store=store, denylist=denylist, hasher=hasher, users=build_directory(cfg, store, hasher),
                 mailer=Mailer(cfg.auth.mail), **parts)
        await denylist.start()
        return gw

    def apply(self, cfg: GatewayConfig) -> None:
        """Swap in what a reload may change: routes, upstreams, identity, the keys and the rest of
        ``tokens``. Everything is built before the swap, which happens without an await, so no
        request sees half of each; requests in flight finish on what they started with (the old
        Forwarder closes once its last one has ended). Raises ValueError for a key that cannot be used."""
        parts = _from_config(cfg, self.store, self.denylist, self.forwarder.watcher)
        old_forwarder, old_verifier, old_authenticator = self.forwarder, self.verifier, self.authenticator
        for name, value in parts.items():
            setattr(self, name, value)
        old_authenticator.close()
        for closing in (old_forwarder.retire(), old_verifier.close()):
            task = asyncio.ensure_future(closing)
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)

    @property
    def ready(self) -> bool:
        return self.denylist.in_sync

    async def close(self) -> None:
        for task in list(self.retiring):
            task.cancel()
        await asyncio.gather(*self.retiring, return_exceptions=True)
        await self.mailer.close()   # bounded: queued mails get a few seconds to go out
        await self.denylist.close()
        await self.forwarder.close()
        await self.verifier.close()
        await self.users.close()
        self.hasher.close()
        await self.store.close()


def _from_config(cfg: GatewayConfig, store: Store, denylist: Denylist, watcher: ConnectionWatcher) -> dict[str, Any]:
    """The Gateway's parts that the config alone decides, which a reload builds anew. Raises
    ValueError for a key that cannot be used (before the Authenticator listens to ``denylist``)."""
    keyring = KeyRing.from_config(cfg.tokens)
    verifier = Verifier(cfg.tokens, cfg.identity, keyring=keyring)
    return {"config": cfg, "rules": cfg.rules, "verifier": verifier,
            "authenticator": Authenticator(verifier, denylist, TokenCache(cfg.tokens.cache_size, cfg.tokens.leeway)),
            "passport": Passport.from_config(cfg), "minter": Minter(cfg.tokens, cfg.identity),
            "forwarder": Forwarder(cfg, watcher=watcher), "jwks_body": json.dumps(keyring.public_jwks()).encode(),
            "dpop": DpopGuard(cfg, store)}


GATEWAY = web.AppKey("gateway", Gateway)
JWKS_PATH = "/.well-known/jwks.json"
# TRACE reflects the request (identity headers included) back to the caller; CONNECT opens a tunnel.
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
CLIENT_GONE = 499   # the access line's status when the client hung up before its answer
SWITCHED_PROTOCOLS = 101


async def handle(request: web.Request) -> web.StreamResponse:
    """The app's catch-all route (the FrontDoor sends most proxied requests to ``proxy`` directly)."""
    return await proxy(request.app[GATEWAY], request)


async def proxy(gw: Gateway, request: web.Request) -> web.StreamResponse:
    if request.method in REFUSED_METHODS:
        raise MethodRefused(headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"})
    note = request.get(ACCESS_NOTE)                            # the access line's, when it is on
    path = normalise(request.raw_path.partition("?")[0])      # BadPath -> 400
    if note is not None:
        note.path = path
    rule = gw.rules.match(request.method, path)                # NoRoute -> 404
    if note is not None:
        note.route, note.upstream, note.routed_at = rule.label, rule.upstream, time.perf_counter()
    headers, identity, renewed_nonce = gw.passport.anonymous, None, None
    if not rule.public:
        request[DPOP_ALGS] = gw.dpop.algs                      # its 401s carry a DPoP challenge too
        scheme, token = extract_presented_token(request, gw.config)   # MissingToken, BadRequest, CsrfFailed
        known = await gw.authenticator.authenticate(token, note)   # InvalidToken, RevokedToken -> 401; 503
        identity = known.identity
        if CNF in identity.claims:   # RFC 8705: the certificate is the connection's, so checked cached or not
            check_certificate_binding(identity.claims, client_certificate(request, gw.config.listen))   # 401
        if CNF in identity.claims or scheme != BEARER or rule.dpop_required or gw.dpop.required:
            # RFC 9449: the proof is the request's own, so checked cached or not (InvalidToken, InvalidDpopProof -> 401)
            await gw.dpop.check_resource(request, scheme, token, identity.claims, rule.dpop_required)
            renewed_nonce = request.get(RENEWED_NONCE)           # RFC 9449 8.2: the answer hands out the next
        if note is not None:
            note.subject, note.checked_at = identity.sub, time.perf_counter()
        authorize(rule, identity)                              # Forbidden -> 403
        headers = gw.passport.cached_headers_for(known, rule.upstream)
    return await gw.forwarder.forward(request, path, rule.upstream, headers, identity, note, renewed_nonce)   # 502/504


class FrontDoor:
    """The proxy port's request handler, in place of the app's router: a proxied request goes
    straight to ``proxy``; the gateway's own endpoints (everything under ``auth.prefix``, and the
    JWKS) go through the app's router and middleware, whose catch-all is that same ``proxy``, so
    the answer is the same either way, only cheaper here."""

    def __init__(self, app: web.Application, app_handler: Handler) -> None:
        self._gw = app[GATEWAY]
        self._app_handler = app_handler
        self._own_prefix = app[GATEWAY].config.auth.prefix.rstrip("/") + "/"
        self._own_paths = frozenset({self._own_prefix.rstrip("/"), JWKS_PATH})
        self.access = AccessLog(self._gw.config.log)
        recorder = app.get(METRICS)   # with admin.metrics
        self._record = recorder.request if recorder is not None else None
        # The server's request handler: with neither the access log nor metrics, no wrapper at all.
        self.handler: Handler = self._logged if self.access.enabled or self._record else self._answer

    async def _logged(self, request: web.Request) -> web.StreamResponse:
        started, note = time.perf_counter(), AccessNote()
        request[ACCESS_NOTE] = note
        status, resp = CLIENT_GONE, None
        try:
            resp = await self._answer(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:   # also when the client hung up (the task is cancelled): 499, as nginx logs it
            if status == CLIENT_GONE and note.ws_close is not None:
                # A WebSocket session that ran: aiohttp cancels its handler when the client's connection
                # closes, which is how most sessions end.
                status = SWITCHED_PROTOCOLS
            if self.access.enabled:
                request_id = resp.headers.get(REQUEST_ID) if resp is not None else note.request_id
                self.access.write(request, status, request_id, started, note)
            if self._record is not None:   # counted in plain dicts; folded into prometheus off the request path
                self._record(request.method, status, note, started)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.path   # what the app's router would match on
        if path.startswith(self._own_prefix) or path in self._own_paths:
            return await self._app_handler(request)
        try:   # answer_errors, inlined: one coroutine less on every proxied request
            if "Expect" in request.headers:   # 417 now; 100 Continue only once it is going to be forwarded
                check_expectation(request)
            return await proxy(self._gw, request)
        except web.HTTPException:
            raise
        except Exception as exc:
            return answer_for(request, exc)
