"""Registering one of the gateway's own endpoints: its handlers by method, and the 405s of the rest."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ..errors import GatewayError, Handler, MethodNotAllowed, MethodRefused
from ..pipeline import REFUSED_METHODS

# Allow on an endpoint that answers every method but TRACE and CONNECT: what the proxy says (pipeline.proxy).
ANY_METHOD = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def add_endpoint(app: web.Application, path: str, handlers: Mapping[str, Handler]) -> None:
    """Register one of the gateway's own endpoints: ``handlers`` by method ("*": every other method).
    TRACE and CONNECT get the proxy's 405 method_refused, on every path alike; any other method
    without a handler gets 405 method_not_allowed. Both say Allow."""
    resource = app.router.add_resource(path)
    allow = ", ".join(method for method in handlers if method != "*") or ANY_METHOD
    for method in sorted(REFUSED_METHODS):
        resource.add_route(method, _refuse(MethodRefused, allow))
    for method, handler in handlers.items():
        resource.add_route(method, handler)
    if "*" not in handlers:
        resource.add_route("*", _refuse(MethodNotAllowed, allow))


def _refuse(error: type[GatewayError], allow: str) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise error(headers={"Allow": allow})
    return refuse
