"""safe_redirect (gateway/auth/oauth/redirects.py): every payload of oauth2-proxy's open-redirect corpus
(tests/data/open_redirects.txt) is refused, as written and once query-unescaped, and so are the
families of its advisories and our own (redirect_payloads.py: encodings, hidden characters, look-alikes,
userinfo, schemes, numeric hosts); the allowed cases come back unchanged.

The WHATWG view of the same rule (what a browser does with an allowed rd) is test_redirects_whatwg.py.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest

from gateway.auth.oauth.redirects import MAX_RD_CHARS, safe_redirect
from tests.unit.auth.oauth.redirect_payloads import (ALLOWED, ALLOWLIST, CORPUS, HOSTILE_CORPUS, OWN,
                                                     SAME_ORIGIN_IN_CORPUS)


def test_the_corpus_file_holds_the_whole_oauth2_proxy_list():
    assert len(CORPUS) == 558 and len(set(CORPUS)) == len(CORPUS)
    assert SAME_ORIGIN_IN_CORPUS <= set(CORPUS)
    assert "" not in CORPUS and "/\\/\\/example.com/" in CORPUS and CORPUS[-1] == "ｰlocaldomain.pw"


@pytest.mark.parametrize("payload", HOSTILE_CORPUS)
def test_corpus_payload_is_refused_as_written(payload):
    assert safe_redirect(payload, ALLOWLIST) is None


@pytest.mark.parametrize("payload", HOSTILE_CORPUS)
def test_corpus_payload_is_refused_once_unescaped(payload):
    # oauth2-proxy's own test reads each line through url.QueryUnescape ("+" is a space there too).
    assert safe_redirect(unquote_plus(payload), ALLOWLIST) is None


@pytest.mark.parametrize("payload", sorted(SAME_ORIGIN_IN_CORPUS))
def test_corpus_paths_that_stay_on_this_origin_are_allowed(payload):
    assert safe_redirect(payload, ALLOWLIST) == payload


REFUSED = [pytest.param(payload, id=f"{family}-{index}") for family, payloads in OWN.items()
           for index, payload in enumerate(payloads)]


@pytest.mark.parametrize("payload", REFUSED)
def test_hostile_rd_is_refused(payload):
    assert safe_redirect(payload, ALLOWLIST) is None


@pytest.mark.parametrize("rd", ALLOWED)
def test_allowed_rd_comes_back_unchanged(rd):
    assert safe_redirect(rd, ALLOWLIST) == rd


@pytest.mark.parametrize("rd", [None, "", "/" + "a" * MAX_RD_CHARS, "https://app.example.test/" + "a" * MAX_RD_CHARS])
def test_missing_or_overlong_rd_is_refused(rd):
    assert safe_redirect(rd, ALLOWLIST) is None


def test_an_empty_allowlist_allows_paths_only():
    assert safe_redirect("/dashboard", ()) == "/dashboard"
    assert safe_redirect("https://app.example.test/", ()) is None


def test_allowlist_entries_are_compared_as_origins():
    entries = ["HTTPS://App.Example.TEST:443", "http://[0:0::1]:8080"]
    assert safe_redirect("https://app.example.test/x", entries) == "https://app.example.test/x"
    assert safe_redirect("http://[::1]:8080/", entries) == "http://[::1]:8080/"
    assert safe_redirect("http://[0:0:0:0:0:0:0:1]:8080/x", entries) == "http://[0:0:0:0:0:0:0:1]:8080/x"
    for other in ("http://[::1]/", "http://[::2]:8080/", "http://127.0.0.1:8080/", "http://[::ffff:127.0.0.1]:8080/"):
        assert safe_redirect(other, entries) is None


def test_an_allowlist_entry_that_is_no_origin_matches_nothing():
    bad = ["http://evil.test", "https://evil.test/", "https://u@evil.test", " https://evil.test", "https://0x7f.1"]
    for rd in ("http://evil.test/", "https://evil.test/", "https://u@evil.test/", "https://0x7f.1/"):
        assert safe_redirect(rd, bad) is None
    assert safe_redirect("/dashboard", bad) == "/dashboard"
