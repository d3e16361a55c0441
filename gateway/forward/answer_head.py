"""Step 6, the way back: what a well-formed upstream answer head is, decided here for both upstream
clients (forward/h1client.py, forward/general.py) before anything of it reaches the client.

In: the parsed status code, reason phrase and headers (str, bytes >= 0x80 decoded or surrogate-escaped
as both parsers do). Out: nothing, or MalformedAnswer; the caller answers 502 and drops the connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain

# RFC 9112 4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ); RFC 9110 5.5: a field value is
# VCHAR / obs-text with SP and HTAB between, a field name a token. So no control character but HTAB
# anywhere in a head: a NUL, a bare CR or an ESC would reach the client (or break its connection)
# otherwise. obs-text (bytes >= 0x80) stays allowed: it arrives as characters >= U+0080.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HTTP_1 = frozenset({"1.0", "1.1"})


class MalformedAnswer(ValueError):
    """The upstream's answer head breaks HTTP's grammar."""


def check_answer_head(status: int, reason: str, headers: Iterable[tuple[str, str]], version: str = "1.1",
                      transfer_coding: str | None = None) -> None:
    """Raise MalformedAnswer unless the answer is HTTP/1.0 or 1.1 (``version``: "1.1"), ``status`` is
    in 100..599, no control character (HTAB aside) is in ``reason`` or in a header's name or value,
    and its transfer coding, if any (``transfer_coding``: every Transfer-Encoding value, joined with
    ", "), is one ``chunked``. Runs on every proxied answer: one join, two searches in C. (Both
    parsers already refuse a status that is not three digits and most broken names.)"""
    if version not in _HTTP_1:   # both parsers read "HTTP/2.0 200" as an HTTP/1 answer; nothing sane sends it
        raise MalformedAnswer(f"an HTTP/{version} status line on an HTTP/1.1 connection")
    if not 100 <= status <= 599:   # RFC 9110 15: the first digit is the class, 1 to 5
        raise MalformedAnswer(f"the status code {status} is outside 100..599")
    if _CONTROL.search(reason) is not None or _CONTROL.search("".join(chain.from_iterable(headers))) is not None:
        raise MalformedAnswer("a control character in the answer's head")
    # Both parsers undo chunked at most, and Transfer-Encoding is hop-by-hop (never relayed): an answer
    # still coded otherwise (gzip, or chunked twice) would reach the client as if it were plain.
    if transfer_coding is not None and transfer_coding.strip().lower() != "chunked":
        raise MalformedAnswer("a transfer coding other than one chunked")
