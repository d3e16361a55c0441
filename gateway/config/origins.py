"""Origins as browsers compare them (scheme, host, port): the entries of ``auth.redirect_allowlist``,
checked when the config loads and read again by the ``rd`` check (auth/oauth/redirects.py)."""

from __future__ import annotations

import ipaddress
import re

DEFAULT_PORTS = {"https": 443, "http": 80}
_ENTRY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")   # WHATWG "ends in a number": the host is read as IPv4


def check_allowlist_origin(value: str) -> str:
    """Config-time check of one `auth.redirect_allowlist` entry: an origin `https://host[:port]`
    (or `http://` on a loopback host: 127.0.0.0/8, ::1, localhost), no path other than empty, no
    query, fragment or userinfo; returns it normalised (lower-case scheme and host, default port
    dropped); raises ValueError with a clear message otherwise."""
    scheme, host, port = entry_origin(value)
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


def entry_origin(value: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an allowlist entry; ValueError with the reason when it is no origin."""
    if not value.isascii() or any(not c.isprintable() or c.isspace() or c == "\\" for c in value):
        raise ValueError(f"{value!r}: an origin is printable ASCII without spaces or backslashes")
    match = _ENTRY.fullmatch(value)
    if match is None or not match.group("authority"):
        raise ValueError(f"{value!r} is not an origin: write scheme://host[:port], like https://app.example.com")
    scheme, authority, rest = match.group("scheme", "authority", "rest")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{value!r}: an origin's scheme is https (http only on a loopback host)")
    if "@" in authority:
        raise ValueError(f"{value!r}: an origin has no user name or password (userinfo)")
    if rest:
        raise ValueError(f"{value!r}: an origin has no path, query or fragment; write {scheme}://{authority}")
    host, port = _split_authority(value, authority)
    host = _check_host(value, host)
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(f"{value!r}: http:// only on a loopback host (127.0.0.0/8, ::1, localhost); "
                         "use https://")
    return scheme, host, (port if port is not None else DEFAULT_PORTS[scheme])


def _split_authority(value: str, authority: str) -> tuple[str, int | None]:
    host, port = authority, None
    if authority.startswith("[") and "]" in authority:
        end = authority.index("]") + 1
        host, after = authority[:end], authority[end:]
        if after and not after.startswith(":"):
            raise ValueError(f"{value!r}: nothing but a :port may follow an IPv6 address")
        port = after[1:] if after else None
    elif ":" in authority:
        host, _, port = authority.partition(":")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _check_host(value: str, host: str) -> str:
    """The host lower-cased (IPv6 compressed): a DNS name of letters, digits and hyphens, four-decimal
    IPv4 or [IPv6]. Other numeric forms ("0x7f.1", "2130706433") are refused: browsers read them as IPv4."""
    host = host.lower()
    if host.startswith("["):
        literal = ipv6_literal(host)
        if literal is None:
            raise ValueError(f"{value!r}: {host} is not an IPv6 address in brackets")
        return literal
    if host.endswith("."):
        raise ValueError(f"{value!r}: write the host without a trailing dot (browsers treat it as another origin)")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            if str(ipaddress.IPv4Address(host)) == host:
                return host
        except ValueError:
            pass
        raise ValueError(f"{value!r}: write an IPv4 address as four decimal numbers, like 127.0.0.1")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r}: {host!r} is not a host name (letters, digits, hyphens and dots)")
    return host


def ipv6_literal(host: str) -> str | None:
    """"[IPv6]" compressed and lower-cased as browsers serialise it (WHATWG URL 3.6), or None."""
    if not host.endswith("]"):
        return None
    try:
        return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
    except ValueError:   # also a zone id ("%25eth0"): browsers refuse those
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host == "[::1]":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False
