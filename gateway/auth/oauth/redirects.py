"""Where a browser may go after a login (DESIGN "Delegated login", ``rd``): an untrusted ``rd`` and the
allowlist in, the same ``rd`` or None out. The allowlist's entries are read by config/origins.py.

Plain strings in and out: no aiohttp, nothing of gateway's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from ...config.origins import DEFAULT_PORTS, entry_origin, ipv6_literal

MAX_RD_CHARS = 2048
# Percent-decodings looked through (%252f -> %2f -> /). A browser decodes none, a server or a framework
# one or two; an rd still changing after this many is refused rather than followed further.
MAX_DECODINGS = 8

# RFC 3986 (3.3-3.5): pchar = unreserved / pct-encoded / sub-delims / ":" / "@". Nothing else may appear
# raw: no space, control, backslash, quote, <, >, {, |, }, ^, backtick or non-ASCII, so an allowed rd
# needs no escaping in a Location header and browsers and servers cannot read it differently there.
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_TAIL = rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
_RELATIVE = re.compile(rf"/(?:{_PCHAR}|/)*{_TAIL}")
# Only letters, digits, dots and hyphens (or an IPv6 literal) between "//" and the port: no userinfo,
# no "%", no "\" - so the host a browser reads is this string, lower-cased (WHATWG URL, host parsing).
_ABSOLUTE = re.compile(r"(?P<scheme>[Hh][Tt][Tt][Pp][Ss]?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                       rf"(?::(?P<port>[0-9]{{1,5}}))?(?:/(?:{_PCHAR}|/)*)?{_TAIL}")

# Unicode characters drawn like "/" or "\": a server that folds them (NFKC maps only some of them) could
# turn "/<one of these>evil.test" into "//evil.test". Refused as separators in a relative rd's path.
_SLASH_LIKE = str.maketrans(dict.fromkeys(
    "\\\u2044\u2215\u2216\u2571\u2572\u27cb\u27cd\u29f5\u29f8\u29f9\u3033\u3035\ufe68\uff0f\uff3c", "/"))
# "+" is a space to form decoders, so "/+/evil.test" could become "/ /evil.test"; spaces are dropped before
# the segments are read, as oauth2-proxy learnt (GHSA-j7px-6hwj-hpjg: "/\t/evil.test", "/ /evil.test").
_BLANKS = str.maketrans(dict.fromkeys(" +"))
# Control, format (zero-width, bidi), and separator characters other than the plain space.
_HIDDEN = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_ASCII_HIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")   # the same, in ASCII


def safe_redirect(rd: str | None, allowlist: Sequence[str]) -> str | None:
    """The URL to send the browser to after login, or None when ``rd`` is not allowed
    (the caller then uses "/" or refuses with 400).

    Allowed: a path on this origin starting with exactly one "/" (no empty or dot segment in it), or an
    absolute http(s) URL whose origin equals an allowlist entry. An allowlist entry that
    ``check_allowlist_origin`` refuses matches nothing. The value returned is ``rd`` unchanged."""
    if not isinstance(rd, str) or not rd or len(rd) > MAX_RD_CHARS:
        return None
    relative = _RELATIVE.fullmatch(rd)   # the grammar first: what it lets through is ASCII
    absolute = None if relative else _ABSOLUTE.fullmatch(rd)
    if not (relative or absolute) or not _reads_plainly(rd):
        return None
    if relative:
        paths = _readings(re.split(r"[?#]", rd, maxsplit=1)[0])
        return rd if paths is not None and all(_is_plain_path(path) for path in paths) else None
    origin = _url_origin(*absolute.group("scheme", "host", "port")) if absolute else None
    return rd if origin is not None and origin in _allowed_origins(allowlist) else None


def _readings(text: str) -> list[str] | None:
    """``text`` and each percent-decoding of it, plain and NFKC-folded (a server may fold "％2f" into
    "%2f"); None when a decoding is not UTF-8 (overlong "%c0%af" is "/" to lenient decoders) or the
    nesting is deeper than MAX_DECODINGS."""
    found: list[str] = []
    for fold in (False, True):
        if fold and all(level.isascii() for level in found):
            break   # NFKC leaves ASCII alone: the folded readings would be the same
        level = text
        for _ in range(MAX_DECODINGS + 1):   # the last decoding must change nothing
            found.append(level)
            try:
                decoded = unquote_to_bytes(level).decode("utf-8")
            except UnicodeDecodeError:
                return None
            decoded = unicodedata.normalize("NFKC", decoded) if fold else decoded
            if decoded == level:
                break
            level = decoded
        else:
            return None
    return found


def _reads_plainly(rd: str) -> bool:
    """No reading of ``rd`` (raw, decoded, folded) hides a character a browser or server reads otherwise."""
    readings = _readings(rd)
    return readings is not None and not any(_has_hidden_char(text) for text in readings)


def _has_hidden_char(text: str) -> bool:
    """A backslash, control, format or whitespace character other than the space: browsers strip tab
    and newlines and read "\\" as "/" in http(s) URLs (WHATWG URL), which turned "/\\evil.test" and
    "/%09/evil.test" into other hosts (oauth2-proxy GHSA-qqxw-m5fj-f7gv, GHSA-j7px-6hwj-hpjg)."""
    if text.isascii():
        return _ASCII_HIDDEN.search(text) is not None
    return any(c == "\\" or (c != " " and unicodedata.category(c) in _HIDDEN) for c in text)


def _is_plain_path(path: str) -> bool:
    """No "." or ".." segment and no empty segment before the last one. The first rule keeps a resolver
    from making "//evil.test" of "/.//evil.test" or "/a/..//evil.test" (GHSA-5m6c-jp6f-2vcv); the second
    refuses "//" itself and "/;/evil.test" (";" starts path parameters some servers drop)."""
    segments = path.translate(_SLASH_LIKE).translate(_BLANKS).split("/")[1:]
    for index, segment in enumerate(segments):
        name = segment.split(";", 1)[0]
        if name in (".", "..") or (not name and index < len(segments) - 1):
            return False
    return True


def _url_origin(scheme: str, host: str, port: str | None) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an rd that matched _ABSOLUTE, as a browser would compare it; the host
    stays as written (lower-cased): "2130706433" or "0x7f.1" never equals "127.0.0.1"."""
    scheme, host = scheme.lower(), host.lower()
    if host.startswith("["):
        host = ipv6_literal(host)
        if host is None:
            return None
    number = int(port) if port else DEFAULT_PORTS[scheme]
    return (scheme, host, number) if 0 < number < 65536 else None


def _allowed_origins(allowlist: Sequence[str]) -> set[tuple[str, str, int]]:
    allowed = set()
    for entry in allowlist:
        try:
            allowed.add(entry_origin(entry))
        except ValueError:   # fail closed: the config check reports it; here it just matches nothing
            continue
    return allowed


