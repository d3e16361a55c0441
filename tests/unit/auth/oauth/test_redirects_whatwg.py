"""safe_redirect against a browser's reading (hypothesis): whatever the text, it is refused, or it comes
back unchanged and a WHATWG URL parser resolves it, against the callback's URL, to the gateway's own
origin (and then to a path that does not start with "//") or to an allowlisted origin.

The reference is ada (the ``ada-url`` package): the WHATWG URL parser of Node.js, which strips leading
and trailing C0 controls and spaces, drops tabs and newlines, reads "\\" as "/" in http(s) URLs and
parses numeric IPv4 forms as browsers do. Nothing here emulates those rules by hand. A browser decodes
no percent-escape, so what a server might make of "%2f" or "%09" is not this property's business: the
corpus and the families of test_redirects.py hold those.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from hypothesis import given, settings, strategies as st

from gateway.auth.oauth.redirects import safe_redirect
from tests.unit.auth.oauth.redirect_payloads import ALLOWED, ALLOWLIST, CORPUS, OWN

ada_url = pytest.importorskip("ada_url", reason="the WHATWG reference parser (pip install ada-url)")

CALLBACK = "https://gateway.example.test/auth/oauth/corp/callback"
GATEWAY = "https://gateway.example.test"
ALLOWED_ORIGINS = {ada_url.URL(entry).origin for entry in ALLOWLIST}

# Pieces that meet at the places where parsers differ: schemes, slashes and their look-alikes, hosts
# (allowlisted, foreign, numeric), ports, userinfo, dot segments, escapes and hidden characters.
PIECES = st.sampled_from([
    "/", "/", "//", "\\", "/\\", "https:", "http:", "HTTPS:", "https://", "http://", "javascript:", "data:",
    "app.example.test", "APP.example.test", "evil.test", "www.whitelisteddomain.tld", "127.0.0.1", "2130706433",
    "0x7f.1", "127.1", "[::1]", "[::ffff:7f00:1]", "localhost", ":8080", ":443", ":80", ":08080", ":", "@", ".",
    "..", "./", "../", ";", "+", "?", "#", "&", "=", "x", "%2f", "%2F", "%5c", "%252f", "%2e", "%2e%2e", "%40",
    "%3a", "%23", "%3f", "%09", "%0a", "%0d", "%00", "%20", "%c0%af", "%ef%bc%8f", "\t", "\n", "\r", " ", "\x00",
    "\x0b", "\x0c", "\x7f", "\xa0", "\u2028", "\u3000", "\u3002", "\uff0f", "\u2044", "\uff3c", "\u200b",
])
URL_LIKE = st.lists(st.one_of(PIECES, st.text(max_size=2)), max_size=12).map("".join)
# The same after a start the rule allows (or nearly): most allowed examples come from here.
STARTS = ["/", "https://app.example.test", "https://APP.example.test:443", "http://127.0.0.1:8080",
          "http://127.0.0.1", "https://www.whitelisteddomain.tld"]
NEAR_ALLOWED = st.tuples(st.sampled_from(STARTS), URL_LIKE).map("".join)


def assert_lands_on_an_allowed_origin(rd: str) -> None:
    """The property: refused, or unchanged and resolved by the reference to where the rule says."""
    allowed = safe_redirect(rd, ALLOWLIST)
    if allowed is None:
        return
    assert allowed == rd
    target = ada_url.URL(rd, base=CALLBACK)   # raises ValueError if the browser could not follow it
    assert target.origin in ALLOWED_ORIGINS | {GATEWAY}
    if rd.startswith("/"):
        assert target.origin == GATEWAY and not target.pathname.startswith("//")


@settings(max_examples=3000, deadline=None)
@given(URL_LIKE)
def test_an_allowed_url_like_rd_lands_on_an_allowed_origin(rd):
    assert_lands_on_an_allowed_origin(rd)


@settings(max_examples=3000, deadline=None)
@given(NEAR_ALLOWED)
def test_an_allowed_rd_near_an_allowed_start_lands_on_an_allowed_origin(rd):
    assert_lands_on_an_allowed_origin(rd)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_an_allowed_text_rd_lands_on_an_allowed_origin(rd):
    assert_lands_on_an_allowed_origin(rd)


@pytest.mark.parametrize("rd", ALLOWED)
def test_the_allowed_cases_land_where_the_rule_says(rd):
    assert safe_redirect(rd, ALLOWLIST) == rd
    assert_lands_on_an_allowed_origin(rd)


def test_every_corpus_and_own_payload_keeps_the_property():
    for payload in CORPUS + [p for family in OWN.values() for p in family]:
        assert_lands_on_an_allowed_origin(payload)
        assert_lands_on_an_allowed_origin(unquote_plus(payload))


def test_the_corpus_is_worth_refusing():
    """The reference would send the browser off the gateway's and the allowed origins for a good share of
    the payloads as written (the rest rely on a server decoding them, or are not URLs at all)."""
    def leaves(payload: str) -> bool:
        try:
            return ada_url.URL(payload, base=CALLBACK).origin not in ALLOWED_ORIGINS | {GATEWAY}
        except ValueError:
            return False
    samples = CORPUS + [p for family in OWN.values() for p in family]
    assert sum(map(leaves, samples)) > len(samples) // 3
    assert leaves("/\\evil.test") and leaves("/\t/evil.test") and leaves("https://app.example.test@evil.test")
    assert ada_url.URL("http://0x7f.1:8080/", base=CALLBACK).origin == "http://127.0.0.1:8080"   # refused anyway
