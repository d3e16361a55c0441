"""check_allowlist_origin (gateway/config/origins.py): an `auth.redirect_allowlist` entry is an
origin, https or loopback http, written back the way a browser serialises it; anything else is a
ValueError whose message says what to fix (the message is the point here, so the tests read it)."""

from __future__ import annotations

import pytest

from gateway.config.origins import check_allowlist_origin


@pytest.mark.parametrize(("entry", "normalised"), [
    ("https://app.example.test", "https://app.example.test"),
    ("HTTPS://App.Example.TEST", "https://app.example.test"),
    ("https://app.example.test:443", "https://app.example.test"),
    ("https://app.example.test:8443", "https://app.example.test:8443"),
    ("https://app.example.test:08443", "https://app.example.test:8443"),
    ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ("https://a-b.c1.example", "https://a-b.c1.example"),
    ("https://10.0.0.1", "https://10.0.0.1"),
    ("https://[2001:DB8:0:0::1]:8443", "https://[2001:db8::1]:8443"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:80", "http://127.0.0.1"),
    ("http://127.5.6.7", "http://127.5.6.7"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("HTTP://LOCALHOST", "http://localhost"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),
])
def test_an_origin_is_accepted_and_normalised(entry, normalised):
    assert check_allowlist_origin(entry) == normalised
    assert check_allowlist_origin(normalised) == normalised


@pytest.mark.parametrize(("entry", "reason"), [
    ("http://app.example.test", "loopback"),
    ("http://10.0.0.1:8080", "loopback"),
    ("http://localhost.evil.test", "loopback"),
    ("http://[::ffff:127.0.0.1]", "loopback"),
    ("ftp://app.example.test", "scheme"),
    ("wss://app.example.test", "scheme"),
    ("javascript://app.example.test", "scheme"),
    ("https://app.example.test/", "no path"),
    ("https://app.example.test/app", "no path"),
    ("https://app.example.test?x=1", "query"),
    ("https://app.example.test?", "query"),
    ("https://app.example.test#top", "fragment"),
    ("https://user@app.example.test", "userinfo"),
    ("https://user:pw@app.example.test", "userinfo"),
    ("https://app.example.test@evil.test", "userinfo"),
    ("https://app.example.test:0", "port"),
    ("https://app.example.test:65536", "port"),
    ("https://app.example.test:", "port"),
    ("https://app.example.test:https", "port"),
    ("https://app.example.test:-1", "port"),
    ("https://[::1]:", "port"),
    ("https://app.example.test.", "trailing dot"),
    ("https://0x7f.1", "IPv4"),
    ("http://2130706433", "IPv4"),
    ("http://127.1", "IPv4"),
    ("http://0177.0.0.1", "IPv4"),
    ("https://10.0.0.256", "IPv4"),
    ("https://[::1]x", "IPv6"),
    ("https://[zz::1]", "IPv6"),
    ("https://[::1", "port"),
    ("https://a_b.example.test", "host name"),
    ("https://-app.example.test", "host name"),
    ("https://app..example.test", "host name"),
    ("https://*.example.test", "host name"),
    ("https://app%2eexample.test", "host name"),
    ("https://" + "a" * 64 + ".test", "host name"),
    (" https://app.example.test", "spaces"),
    ("https://app.example.test\n", "spaces"),
    ("https://app.example.test\\", "backslash"),
    ("https://app.exаmple.test", "ASCII"),
    ("app.example.test", "not an origin"),
    ("//app.example.test", "not an origin"),
    ("https:app.example.test", "not an origin"),
    ("https:/app.example.test", "not an origin"),
    ("https:///app.example.test", "not an origin"),
    ("https://", "not an origin"),
    ("", "not an origin"),
])
def test_an_entry_that_is_no_origin_is_refused_with_the_reason(entry, reason):
    with pytest.raises(ValueError, match=reason):
        check_allowlist_origin(entry)
