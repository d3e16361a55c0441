"""The admin port: /healthz (process up), /readyz (config, keys, store, revocation mirror),
POST /admin/revoke (the same as `tokengate revoke`). It binds to 127.0.0.1 by default; with
``admin.token`` set, everything but the two probes needs that bearer token. With ``admin.metrics``
(the default), /metrics answers in Prometheus' text format (metrics.py).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..answers import error_middleware
from ..auth.audit import audit_request
from ..auth.revocation import NothingToRevoke, apply_revocation, build_revocation
from ..errors import BadRevokeRequest, Handler, InvalidToken, StoreDown
from ..logs import ADMIN_REVOKE
from ..metrics import METRICS, add_metrics
from ..pipeline import GATEWAY
from ..steps.extract import bearer_credentials
from ..store.base import StoreUnavailable


@dataclass
class Serving:
    """What the admin port knows of the gateway it watches."""

    main: web.Application
    accepting: bool = False


SERVING = web.AppKey("serving", Serving)
PROBES = frozenset({"/healthz", "/readyz"})   # kubelets and load balancers call these without credentials


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def _readyz(request: web.Request) -> web.Response:
    """200 when this instance should get traffic. The store counts unless ``store.readiness: ignore``:
    then an outage leaves every instance in the load balancer, answering as ``store.on_error`` says
    (503 under deny), instead of taking the whole fleet out at once. The body names each check and
    the store's state either way."""
    serving = request.app[SERVING]
    gw = serving.main.get(GATEWAY)
    # store: reachable and the revocation mirror loaded (DESIGN: not ready until the store connects)
    checks = {"config": True, "keys": gw is not None, "accepting": serving.accepting,
              "store": gw is not None and gw.ready}
    body: dict[str, object] = {"checks": checks}
    counted = checks
    if gw is not None:
        store = gw.config.store
        body["store"] = {"state": "up" if checks["store"] else "down", "readiness": store.readiness,
                         "on_error": store.on_error}
        if store.readiness == "ignore":
            counted = {name: ok for name, ok in checks.items() if name != "store"}
    ok = all(counted.values())
    return web.json_response({"ready": ok, **body}, status=200 if ok else 503)


async def _revoke(request: web.Request) -> web.Response:
    gw = request.app[SERVING].main[GATEWAY]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRevokeRequest("the body must be JSON: {\"jti\": ...}, {\"sub\": ...} or {\"token\": ...}") from None
    if not isinstance(body, dict) or set(body) - {"jti", "sub", "token", "iss"}:
        raise BadRevokeRequest("send exactly one of jti, sub or token (and optionally iss)")
    try:
        revocation = await build_revocation(gw.config, jti=body.get("jti"), sub=body.get("sub"),
                                            token=body.get("token"), iss=body.get("iss"))
        outcome = await apply_revocation(gw.store, revocation, record=gw.denylist.revoke)
    except (ValueError, NothingToRevoke) as exc:
        raise BadRevokeRequest(str(exc)) from None
    except InvalidToken as exc:
        raise BadRevokeRequest(f"that token is not one this gateway accepts: {exc.description}") from None
    except StoreUnavailable:
        raise StoreDown("the store is unavailable; nothing was revoked") from None
    r = outcome.revocation
    audit_request(request, gw, ADMIN_REVOKE, subject=r.id if r.kind == "sub" else None,
                  session=r.id if r.kind == "sid" else None, kind=r.kind, target=r.id)
    return web.Response(text=json.dumps({"revoked": {"kind": r.kind, "iss": r.iss, "id": r.id},
                                         "expires_at": r.expires_at,
                                         "families_killed": outcome.families_killed}),
                        content_type="application/json")


def _token_guard(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PROBES:
            presented = bearer_credentials(request.headers).encode("utf-8", "surrogateescape")   # MissingToken
            # Constant time: the comparison must not tell how much of the token a guess got right.
            if not hmac.compare_digest(presented, expected):
                raise InvalidToken("the admin token is not right")
        return await handler(request)

    return guard


def build_admin_app(main: web.Application, token: str | None = None) -> web.Application:
    """The admin app; with ``token``, every path but the probes needs it as a bearer token;
    /metrics when the main app counts them (``admin.metrics``)."""
    guards = [_token_guard(token)] if token is not None else []
    app = web.Application(middlewares=[error_middleware, *guards])
    app[SERVING] = Serving(main)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/admin/revoke", _revoke)
    if (recorder := main.get(METRICS)) is not None:
        add_metrics(app, recorder, lambda: main.get(GATEWAY))
    return app
