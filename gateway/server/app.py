"""build_app(config): the gateway's routes, middleware and the lifetime of what they share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..answers import error_middleware
from ..auth.account_routes import add_account_routes
from ..auth.endpoints import add_endpoint
from ..auth.openapi import add_openapi_route
from ..auth.routes import add_auth_routes
from ..config.load import GatewayConfig
from ..metrics import METRICS, Recorder
from ..pipeline import GATEWAY, JWKS_PATH, FrontDoor, Gateway, handle
from .edge import EdgeRunner, edge_options

CONFIG = web.AppKey("config", GatewayConfig)
MAX_HEADER_BYTES = 16384


async def _gateway_context(app: web.Application) -> AsyncIterator[None]:
    gw = await Gateway.open(app[CONFIG])
    app[GATEWAY] = gw
    yield
    await gw.close()


async def _jwks(request: web.Request) -> web.Response:
    return web.Response(body=request.app[GATEWAY].jwks_body, content_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=300"})


def build_app(cfg: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[error_middleware], handler_args={"max_field_size": MAX_HEADER_BYTES})
    app[CONFIG] = cfg
    if cfg.admin.metrics:
        app[METRICS] = Recorder()   # the admin app's /metrics reads it
    app.cleanup_ctx.append(_gateway_context)
    add_endpoint(app, JWKS_PATH, {"GET": _jwks, "HEAD": _jwks})
    add_auth_routes(app, cfg)
    add_account_routes(app, cfg)   # after _gateway_context: its background work ends before the Gateway
    add_openapi_route(app, cfg)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class GatewayRunner(EdgeRunner):
    """Serves ``build_app``'s app behind a FrontDoor (proxied requests skip the router), with the
    edge's limits of ``listen`` (server/edge.py: head timeout, idle timeout, no lingering)."""

    front_door: FrontDoor | None = None

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**edge_options(app[CONFIG].listen), **kwargs})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()   # starts the app: the Gateway exists from here on
        self.front_door = FrontDoor(self.app, server.request_handler)
        server.request_handler = self.front_door.handler
        if (recorder := self.app.get(METRICS)) is not None:
            recorder.servers.add(server)   # the open-connections metric reads it
        return server

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.front_door is not None:
            self.front_door.access.flush()   # the last access lines, once the last requests are done
