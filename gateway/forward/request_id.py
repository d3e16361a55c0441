"""The X-Request-Id every answer carries and every forwarded request gets: the client's own when
it sent exactly one sane value, else a fresh uuid4. A forwarded request's id is picked once, with
the upstream's headers, and kept on the request (PICKED), so a refusal that comes after names the
same id the upstream was given."""

from __future__ import annotations

import random
import re

from aiohttp import web

REQUEST_ID = "X-Request-Id"
PICKED = web.RequestKey("request_id", str)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def pick_request_id(values: list[str]) -> str:
    """The client's request id when it sent exactly one sane one, else a fresh uuid4."""
    if len(values) == 1 and _SANE_REQUEST_ID.fullmatch(values[0]):
        return values[0]
    return _fresh_uuid4()


def request_id_of(request: web.Request) -> str:
    """The request's id: the one picked when it was forwarded, else one picked now."""
    picked = request.get(PICKED)
    return picked if picked is not None else pick_request_id(request.headers.getall(REQUEST_ID, []))


def _fresh_uuid4() -> str:
    """A random RFC 4122 version 4 UUID. A request id needs to be unique, not secret: Python's own
    generator does (as str(uuid.uuid4()) would, at twice the cost: a system call per id)."""
    digits = f"{random.getrandbits(124):031x}"
    variant = "89ab"[int(digits[15], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[12:15]}-{variant}{digits[16:19]}-{digits[19:31]}"
