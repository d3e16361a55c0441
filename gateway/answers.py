"""The middleware that turns whatever a handler raised into its HTTP answer: a GatewayError's own
(errors.py), anything else a logged bare 500. Every answer carries the request's X-Request-Id.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .errors import GatewayError, Handler, error_response
from .forward.dpop_request import DPOP_ALGS
from .forward.request_id import REQUEST_ID, request_id_of
from .logs import ACCESS_NOTE

log = logging.getLogger("tokengate")


async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``handler``'s answer, or the JSON answer for what it raised (see ``answer_for``)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        return answer_for(request, exc)


def answer_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for an exception a handler raised: a GatewayError's own, else a logged
    bare 500. It carries the request's X-Request-Id, so a client can match even a refusal. When the
    request's body has not all come, the connection closes after it (Connection: close): the rest
    of a refused body is never read."""
    if isinstance(exc, GatewayError):
        # The access line says it with the status and the code (debug: the same, for the admin port).
        if log.isEnabledFor(logging.DEBUG):
            log.debug("denied", extra={"code": exc.code, "method": request.method, "path": request.rel_url.path})
        if (note := request.get(ACCESS_NOTE)) is not None:
            note.code = exc.code
    else:
        log.error("unhandled error", exc_info=exc, extra={"method": request.method, "path": request.rel_url.path})
        exc = GatewayError()
    resp = error_response(exc, request.get(DPOP_ALGS))
    if REQUEST_ID not in resp.headers:
        resp.headers[REQUEST_ID] = request_id_of(request)
    if not request.content.is_eof():
        resp.force_close()
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await answer_errors(request, handler)
