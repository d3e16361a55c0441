"""The audit line of one request's event (logs.audit), with the request's client address and id
filled in the same way at every event site."""

from __future__ import annotations

from aiohttp import web

from ..forward.request_id import PICKED, request_id_of
from ..logs import SUCCESS, audit
from ..pipeline import Gateway
from .ratelimit import client_address


def audit_request(request: web.Request, gw: Gateway, event: str, *, subject: str | None, session: str | None,
                  outcome: str = SUCCESS, **fields: str | int | None) -> None:
    """Write ``event``'s audit line for ``request``: its client as the rate limits count it, its id."""
    request_id = request_id_of(request)
    # Kept, so that an error answer after this line (a failed login's 401) names the same id.
    request[PICKED] = request_id
    audit(event, subject=subject, session=session, client=client_address(request, gw.config.listen.trusted_proxies),
          request_id=request_id, outcome=outcome, **fields)
