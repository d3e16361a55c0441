"""The X-Request-Id every answer carries and every forwarded request gets: the client's own when
it sent exactly one sane value, else a fresh uuid4."""

from __future__ import annotations

import re
import uuid

REQUEST_ID = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def pick_request_id(values: list[str]) -> str:
    """The client's request id when it sent exactly one sane one, else a fresh uuid4."""
    if len(values) == 1 and _SANE_REQUEST_ID.fullmatch(values[0]):
        return values[0]
    return str(uuid.uuid4())
