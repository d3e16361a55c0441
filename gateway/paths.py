"""Step 0: the raw request path -> one canonical, still percent-encoded path, or BadPath (400).

The result is what rules match on and what the upstream receives, so the two can never disagree.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .errors import BadPath

# Characters that stay (or become) literal: RFC 3986 unreserved, plus the pchar sub-delims and ":" "@".
# Their escapes are decoded too, so each of them has exactly one spelling: a rule written `/users/@me`
# cannot be walked around with `/users/%40me` (which every upstream that decodes paths reads the same).
# `;` is left out on purpose: path parameters are refused, never interpreted.
LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@")
_LITERAL_CLASS = r"A-Za-z0-9\-._~!$&'()*+,=:@"

# The common case: only literal characters, no empty or dot segments. Such a path is already canonical.
_CLEAN = re.compile(rf"/|(?:/(?!\.\.?(?:/|$))[{_LITERAL_CLASS}]+)+/?")
# One escape, or one character that is neither literal nor "/": both need a decision.
_SPECIAL = re.compile(rf"%([0-9A-Fa-f]{{2}})|[^{_LITERAL_CLASS}/]")
# An escaped "%" followed by two hex digits: a double-encoded escape, decoded to something else by any
# upstream that decodes twice (`%252e%252e` -> `..`). Nothing legitimate needs it; refuse it.
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")

_REFUSED_BYTES = {0x2F: "an encoded /", 0x5C: "a backslash", 0x3B: "a ; parameter", 0x00: "a NUL"}


def normalise(raw_path: str) -> str:
    """The canonical form of ``raw_path`` (the path as sent, query already cut off).

    Decodes escapes of LITERAL characters, upper-cases the hex of the others, percent-encodes
    (as UTF-8) any other raw character, resolves ``.``/``..`` (also when encoded) and collapses
    ``//``; a trailing slash is kept. Raises BadPath for: no leading ``/``; ``\\`` or ``;`` raw or
    encoded; an encoded ``/``; a NUL or control character raw or encoded; a malformed or
    double-encoded escape; bytes, raw or encoded, that are not UTF-8 (overlong forms, surrogates);
    a ``..`` above the root.
    """
    if _CLEAN.fullmatch(raw_path):
        return raw_path
    return _normalise_slow(raw_path)


def _normalise_slow(raw_path: str) -> str:
    if not raw_path.startswith("/"):
        raise BadPath("the request path must start with /")
    decoded = _SPECIAL.sub(_canonical, raw_path)
    # Checked after decoding: `%25%41%41` becomes `%25AA`, a double-encoded escape too.
    if _DOUBLE_ENCODED.search(decoded):
        raise BadPath("the request path contains a double-encoded escape")
    _refuse_invalid_utf8(decoded)
    return _resolve_dots(decoded)


def _refuse_invalid_utf8(path: str) -> None:
    # RFC 3987 3.1 / RFC 3629 3: escapes stand for UTF-8, and overlong forms and surrogates are not
    # UTF-8. Lenient decoders (old IIS, some Java and PHP stacks) read `%c0%ae` as "." and
    # `%c0%af` as "/": a `..` or `/` no rule here ever saw. Raw non-ASCII characters are escapes
    # by now (undecodable bytes included), so one strict decode of the whole path sees every byte.
    try:
        unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadPath("the request path is not UTF-8 once decoded") from None


def _canonical(found: re.Match[str]) -> str:
    hex_digits = found.group(1)
    if hex_digits is None:
        return _encode_raw(found.group())
    byte = int(hex_digits, 16)
    _refuse_byte(byte)
    char = chr(byte)
    return char if char in LITERAL else "%" + hex_digits.upper()


def _encode_raw(char: str) -> str:
    if char == "%":
        raise BadPath("the request path contains a malformed % escape")
    if char == "#":   # RFC 9112 3.2: a request target has no fragment; a client never sends one
        raise BadPath("the request target contains a fragment (#)")
    if ord(char) < 0x80:
        _refuse_byte(ord(char))
    try:
        return _escape(char)
    except UnicodeEncodeError:
        raise BadPath("the request path contains a character that cannot be encoded") from None


def _escape(char: str) -> str:
    # aiohttp hands over undecodable bytes as surrogate escapes: encode them back to the same byte.
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogateescape"))


def _refuse_byte(byte: int) -> None:
    what = _REFUSED_BYTES.get(byte)
    if what is None and (byte < 0x20 or byte == 0x7F):
        what = "a control character"
    if what is not None:
        raise BadPath(f"the request path contains {what}")


def _resolve_dots(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path, plus collapsing empty segments; refuses climbing above /."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment == "..":
            if not out:
                raise BadPath("the request path climbs above the root with ..")
            out.pop()
        elif segment and segment != ".":
            out.append(segment)
    last = segments[-1]
    trailing = "/" if out and (last == "" or last == "." or last == "..") else ""
    return "/" + "/".join(out) + trailing


def quote_segment(text: str) -> str:
    """Percent-encode every non-LITERAL character of ``text`` (as UTF-8), the way normalise spells it.

    Used for route patterns, so a rule written with such a character matches the canonical path.
    """
    return "".join(c if c in LITERAL else _escape(c) for c in text)
