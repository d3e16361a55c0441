"""normalise(): the canonical path every rule matches on and every upstream receives; bypass forms refused."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, strategies as st

from gateway.errors import BadPath
from gateway.paths import _CLEAN, _normalise_slow, normalise, quote_segment

CANONICAL = [
    ("/", "/"),
    ("/api/admin", "/api/admin"),
    ("/api/admin/", "/api/admin/"),                  # trailing slash kept
    ("/.well-known/jwks.json", "/.well-known/jwks.json"),
    ("/a..b/..c/c..", "/a..b/..c/c.."),              # dots inside a segment are not dot segments
    ("/API/Admin", "/API/Admin"),                    # case is kept: matching is case-sensitive
    # dot segments
    ("/api/./admin", "/api/admin"),
    ("/api/public/../admin", "/api/admin"),
    ("/api/admin/.", "/api/admin/"),
    ("/api/admin/x/..", "/api/admin/"),
    ("/a/b/c/../../d", "/a/d"),
    ("/..a/.b", "/..a/.b"),
    # encoded dots, any case, alone or mixed with a literal dot
    ("/api/public/%2e%2e/admin", "/api/admin"),
    ("/api/public/%2E%2E/admin", "/api/admin"),
    ("/api/public/%2e%2E/admin", "/api/admin"),
    ("/api/public/.%2e/admin", "/api/admin"),
    ("/api/public/%2e./admin", "/api/admin"),
    ("/api/%2e/admin", "/api/admin"),
    # double slashes
    ("//api//admin", "/api/admin"),
    ("/api///admin//", "/api/admin/"),
    ("//", "/"),
    # unreserved escapes decoded, the rest kept with upper-case hex
    ("/%61pi/%41%7e%7E%2d%5f%2E1", "/api/A~~-_.1"),
    ("/a%c3%a9", "/a%C3%A9"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb%23c%25", "/a%3Fb%23c%25"),
    ("/%f0%9f%98%80/%EF%BF%BF", "/%F0%9F%98%80/%EF%BF%BF"),   # UTF-8 of any length, noncharacters too
    # sub-delims, ":" and "@" have one spelling: the literal one
    ("/users/%40me", "/users/@me"),
    ("/v1/items%3Abatch", "/v1/items:batch"),
    ("/a%21%24%26%27%28%29%2A%2B%2C%3D", "/a!$&'()*+,="),
    # raw characters outside the URI grammar are percent-encoded (non-ASCII as UTF-8)
    ("/a|b", "/a%7Cb"),
    ("/caf\u00e9", "/caf%C3%A9"),
    ("/a{b}[c]^`\"<>", "/a%7Bb%7D%5Bc%5D%5E%60%22%3C%3E"),
    ("/a\udcc3\udca9", "/a%C3%A9"),                  # surrogate-escaped bytes: encoded back as they came
]

REFUSED = [
    ("api/admin", "no leading slash"),
    ("", "empty"),
    ("*", "asterisk form"),
    ("http://host/api", "absolute form"),
    # above the root
    ("/..", "dot-dot at root"),
    ("/../api/admin", "dot-dot first"),
    ("/api/../../admin", "dot-dot climbs past root"),
    ("/%2e%2e/api", "encoded dot-dot at root"),
    ("/api/.%2E/%2e./x", "mixed encoded dot-dots past root"),
    # encoded slash and backslashes
    ("/api%2fadmin", "encoded slash"),
    ("/api/public/..%2Fadmin", "encoded slash after dot-dot"),
    ("/api/public/%2e%2e%2fadmin", "all encoded"),
    ("/api%5cadmin", "encoded backslash"),
    ("/api/public/..%5Cadmin", "encoded backslash after dot-dot"),
    ("/api\\admin", "raw backslash"),
    ("/api/public/..\\admin", "raw backslash after dot-dot"),
    # ; parameters
    ("/api/admin;x", "parameter on the last segment"),
    ("/api/admin;jsessionid=1", "session parameter"),
    ("/api/..;/admin", "dot-dot parameter"),
    ("/api/public/..;/admin", "dot-dot parameter under a public route"),
    ("/a;x/b", "parameter mid-path"),
    ("/api/admin%3bx", "encoded parameter"),
    ("/api/admin%3Bx", "encoded parameter upper case"),
    # NUL and control characters
    ("/api/admin%00", "encoded NUL"),
    ("/api/admin\x00.json", "raw NUL"),
    ("/api/a%0ab", "encoded line feed"),
    ("/api/a%0D%0Ab", "encoded CRLF"),
    ("/api/a\tb", "raw tab"),
    ("/api/a\x7fb", "raw DEL"),
    ("/api/a%7Fb", "encoded DEL"),
    # malformed and double-encoded escapes
    ("/api/%zz", "not hex"),
    ("/api/%4", "one digit"),
    ("/api/%", "bare percent"),
    ("/api/%%32%65", "percent percent"),
    ("/api/public/%252e%252e/admin", "double-encoded dot-dot"),
    ("/api%252Fadmin", "double-encoded slash"),
    ("/a\ud800", "a lone surrogate that is no byte"),
    # bytes that are not UTF-8 once decoded: overlong forms of "." "/" "\\", surrogates, stray bytes
    ("/api/public/%c0%ae%c0%ae/admin", "overlong dot-dot"),
    ("/api/public/%C0%AE%C0%AE/admin", "overlong dot-dot upper case"),
    ("/api/public/%e0%80%ae%e0%80%ae/admin", "three-byte overlong dot-dot"),
    ("/api/public/%f0%80%80%ae./admin", "four-byte overlong dot"),
    ("/api/public/..%c0%afadmin", "overlong slash"),
    ("/api%c1%9cadmin", "overlong backslash"),
    ("/a%c0%80", "overlong NUL"),
    ("/a%ed%a0%80", "lone high surrogate"),
    ("/a%ed%bf%bf", "lone low surrogate"),
    ("/a%ed%a0%bd%ed%b8%80", "surrogate pair spelled as two (CESU-8)"),
    ("/a%f4%90%80%80", "above U+10FFFF"),
    ("/a%ff", "a byte never in UTF-8"),
    ("/a%80", "a stray continuation byte"),
    ("/a%c3", "a truncated sequence"),
    ("/a%c3/%a9", "a sequence split by a slash"),
    ("/a%e2%82", "a sequence cut short"),
    ("/a\udcff", "a raw undecodable byte, as aiohttp surrogate-escapes it"),
    ("/a\udcc0\udcae", "a raw overlong dot"),
    ("/a%c3\udcff", "an escape and a raw byte together"),
    # a request target has no fragment (RFC 9112 3.2)
    ("/api/public#/../../admin", "a fragment"),
    ("/api/public/x#", "an empty fragment"),
]


@pytest.mark.parametrize(("raw", "expected"), CANONICAL, ids=[c[0] for c in CANONICAL])
def test_path_is_normalised_to_canonical_form(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(("raw", "case"), REFUSED, ids=[c[1] for c in REFUSED])
def test_bypass_form_is_refused_with_400(raw: str, case: str) -> None:
    with pytest.raises(BadPath) as info:
        normalise(raw)
    assert info.value.status == 400
    assert info.value.code == "bad_path"


@pytest.mark.parametrize("raw", ["/", "/api/admin", "/api/admin/", "/a-b_c~d.e/f!$&'()*+,=:@g"])
def test_clean_path_takes_fast_path_and_is_returned_unchanged(raw: str) -> None:
    assert _CLEAN.fullmatch(raw)
    assert normalise(raw) is raw


@pytest.mark.parametrize("raw", ["//a", "/a//b", "/./a", "/a/..", "/a/.", "/a%41", "/a;b", "/a\\b", "a", ""])
def test_path_needing_work_misses_fast_path(raw: str) -> None:
    assert not _CLEAN.fullmatch(raw)


def test_pattern_segment_is_quoted_like_a_normalised_path() -> None:
    assert quote_segment("items") == "items"
    assert quote_segment("@me:x") == "@me:x"
    assert quote_segment("a|b c\u00e9") == "a%7Cb%20c%C3%A9"
    assert normalise("/" + quote_segment("a|b c\u00e9")) == "/a%7Cb%20c%C3%A9"


# Property tests: assemble paths from the pieces bypasses are made of.
PIECES = ["/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%3b", "%00", "%41", "%7e", "%40", "%25",
          "%c3", "%zz", "%", "a", "B", "~", "@", ";", "\\", "*", "|", "\u00e9", " ", "\t",
          "%c3%a9", "%a9", "%c0%ae", "%e0%80%ae", "%ed%a0%80", "%ff", "\udcc3", "\udca9", "\udcff"]
raw_paths = st.lists(st.sampled_from(PIECES), max_size=14).map(lambda parts: "/" + "".join(parts))


@given(raw_paths)
def test_normalising_twice_changes_nothing(raw: str) -> None:
    try:
        once = normalise(raw)
    except BadPath:
        return
    assert normalise(once) == once


@given(raw_paths)
def test_normalised_path_hides_nothing_from_an_upstream_that_decodes_it(raw: str) -> None:
    try:
        out = normalise(raw)
    except BadPath:
        return
    assert out.startswith("/") and "//" not in out
    decoded_segments = unquote(out).split("/")[1:]
    assert "." not in decoded_segments and ".." not in decoded_segments
    assert not any(c in unquote(out) for c in ";\\\x00")
    assert re.search(r"%25[0-9A-Fa-f]{2}", out) is None     # decoding twice still reveals nothing


@given(raw_paths)
def test_normalised_path_is_utf8_once_decoded(raw: str) -> None:
    try:
        out = normalise(raw)
    except BadPath:
        return
    unquote(out, errors="strict")   # no overlong form or surrogate for a lenient decoder to read as "." or "/"


@given(st.text(alphabet="/.ab-~_!@:*", max_size=20).map(lambda s: "/" + s))
def test_fast_path_agrees_with_full_normalisation(raw: str) -> None:
    if _CLEAN.fullmatch(raw):
        assert _normalise_slow(raw) == raw
