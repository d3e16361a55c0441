"""The rd payloads the redirect tests share: oauth2-proxy's open-redirect corpus (tests/data/
open_redirects.txt), the families of its advisories and our own, each a list that safe_redirect must
refuse, and the cases it must allow. Data only; test_redirects.py and test_redirects_whatwg.py use it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from gateway.auth.oauth.redirects import MAX_DECODINGS, MAX_RD_CHARS

# www.whitelisteddomain.tld is the allowed domain oauth2-proxy's corpus is written against.
ALLOWLIST = ("https://app.example.test", "http://127.0.0.1:8080", "https://www.whitelisteddomain.tld")
CORPUS_FILE = Path(__file__).resolve().parents[3] / "data" / "open_redirects.txt"


def load_corpus(path: Path = CORPUS_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines[:-1] if not line.startswith("#")]   # the file ends with a newline


CORPUS = load_corpus()
# Corpus lines the rule allows: paths on the gateway's own origin whose *query* names another site.
# The browser stays on this origin; whether a page there forwards `?url=` on is that page's own open
# redirect, reachable without any login. (oauth2-proxy refuses them only because its regex looks for
# "//" anywhere in the string; a pending change of its own, commit 1d218cd6, drops them from the list.)
SAME_ORIGIN_IN_CORPUS = {
    "/?url=//example.com&next=//example.com&redirect=//example.com&redir=//example.com&rurl=//example.com"
    "&redirect_uri=//example.com",
    "/?url=Https://example.com&next=Https://example.com&redirect=Https://example.com&redir=Https://example.com"
    "&rurl=Https://example.com&redirect_uri=Https://example.com",
    "/ReceiveAutoRedirect/false?desiredLocationUrl=http://xssposed.org",
    "/redirect?url=//example.com&next=//example.com&redirect=//example.com&redir=//example.com&rurl=//example.com"
    "&redirect_uri=//example.com",
    "/redirect?url=Https://example.com&next=Https://example.com&redirect=Https://example.com"
    "&redir=Https://example.com&rurl=Https://example.com&redirect_uri=Https://example.com",
}
HOSTILE_CORPUS = [line for line in CORPUS if line not in SAME_ORIGIN_IN_CORPUS]


# --- oauth2-proxy's advisories, each family in our own words ------------------------------------------
# GHSA-qqxw-m5fj-f7gv (CVE-2020-5233): "/\evil" - browsers read "\" as "/" in http(s) URLs.
BACKSLASH = ["/\\evil.test", "/\\\\evil.test", "/\\/evil.test", "\\/evil.test", "\\\\evil.test", "\\evil.test",
             "/%5cevil.test", "/%5Cevil.test", "/%5c/evil.test", "/%5c%5cevil.test", "/a\\b", "/a%5cb",
             "/dashboard?x=%5c", "/dashboard#\\", "https://app.example.test/\\evil.test"]
# GHSA-j7px-6hwj-hpjg (CVE-2020-11053): whitespace between the slashes, stripped by browsers.
WHITESPACE_BETWEEN = ["/ /evil.test", "/ \\evil.test", "/\t/evil.test", "/\t\\evil.test", "/\v/evil.test",
                      "/\v\\evil.test", "/\n/evil.test", "/\n\\evil.test", "/\r/evil.test", "/\r\\evil.test",
                      "/\f/evil.test", "/%09/evil.test", "/%0a/evil.test", "/%0D/evil.test", "/%0b/evil.test",
                      "/%0c/evil.test", "/%20/evil.test", "/%20%20/evil.test", "/+/evil.test", "/%2b/evil.test",
                      "/%09%09/%09%09evil.test", "/\t/\t\\evil.test"]
# GHSA-5m6c-jp6f-2vcv (CVE-2020-4037): more tabs, and dot segments that normalise into "//".
DOTS_AND_TABS = ["/\t\t/\t/evil.test", "/\t\t\\\t/evil.test", "/\t\t/\t\t\\evil.test", "/\t\t\\\t\t/evil.test",
                 "/./\\evil.test", "/./../../\\evil.test", "/.//evil.test", "/..//evil.test", "/a/..//evil.test",
                 "/a/b/../..//evil.test", "/%2e//evil.test", "/%2E%2E//evil.test", "/.%2e//evil.test",
                 "/%2e%2e/%2fevil.test", "/./%2fevil.test", "/a/../%2fevil.test", "/a%2f..%2f%2fevil.test",
                 "/.", "/..", "/a/.", "/a/..", "/./dashboard", "/a/../dashboard", "/.;/evil.test",
                 "/..;/evil.test", "/%2e;x/evil.test", "/%252e%252e//evil.test"]
# GHSA-4mf2-f3wh-gvf2 (CVE-2021-21291): an allowed domain matched as a suffix or prefix of another.
LOOKALIKE_ORIGINS = [
    "https://evilapp.example.test/", "https://evil-app.example.test/", "https://xapp.example.test",
    "https://sub.app.example.test/", "https://example.test/", "https://app.example.test.evil.test/",
    "https://app.example.testevil.test/", "https://APP.EXAMPLE.TEST.evil.test/", "https://evil.test/app.example.test",
    "https://evil.test?https://app.example.test", "https://evil.test#https://app.example.test",
    "https://evil.test#@app.example.test", "https://evil.test/?@app.example.test", "https://app.example.test./",
    "https://app.example.test.:443/", "https://evilwww.whitelisteddomain.tld/", "https://whitelisteddomain.tld/",
    "https://www.whitelisteddomain.tld.evil.test/", "https://app.example.test:8443/", "https://app.example.test:80/",
    "https://app.example.test:444/", "https://app.example.test:0/", "https://app.example.test:65536/",
    "https://app.example.test:99999/", "https://app.example.test:/", "https://app.example.test:443:443/",
    "https://app.example.test:+443/", "http://app.example.test/", "https://[app.example.test]/",
    "https://app%2eexample.test/", "https://app.example%2etest/", "https://app_example.test/",
]


# --- our own families ---------------------------------------------------------------------------------
def encoded(char: str) -> str:
    return quote(char, safe="")


HIDDEN = ["\t", "\n", "\r", "\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\xa0", "\u1680",
          "\u2000", "\u2007", "\u200b", "\u200e", "\u202e", "\u2028", "\u2029", "\u205f", "\u3000", "\ufeff"]
HIDDEN_CHARS = [template.format(c) for c in HIDDEN + [" "] for template in
                ("/{}/evil.test", "/dash{}board", "{}/dashboard", "/dashboard{}", "/a?b={}", "/a#{}",
                 "https://app.example.test/{}", "{}https://app.example.test/", "https://app.example.test{}/")]
HIDDEN_ENCODED = [template.format(encoded(c), encoded(encoded(c))) for c in HIDDEN for template in
                  ("/dash{0}board", "/a?b={0}", "/a#{0}", "/dash{1}board", "https://app.example.test/{0}",
                   "https://app.example.test/?x={1}")]
SLASH_LIKE = ["\uff0f", "\u2044", "\u2215", "\u2216", "\u29f8", "\u29f9", "\uff3c", "\ufe68", "\u2571", "\u3033"]
LOOKALIKE_SLASHES = [template.format(c) for c in SLASH_LIKE for template in
                     ("/{}evil.test", "{0}{0}evil.test", "/{}/evil.test", "https:{0}{0}evil.test")] + [
                     template.format(encoded(c)) for c in SLASH_LIKE for template in
                     ("/{}/evil.test", "/{0}{0}evil.test", "/a/{}/evil.test", "{0}{0}evil.test")]
ENCODED_SLASHES = ["%2f%2fevil.test", "%2F%2Fevil.test", "/%2f/evil.test", "/%2F%2Fevil.test", "/%2fevil.test",
                   "/a%2f%2fb", "%5c%5cevil.test", "/%252f%252fevil.test", "%252f%252fevil.test",
                   "/%25252f%25252fevil.test", "/%255c%255cevil.test", "/%2f%5cevil.test", "/%5c%2fevil.test",
                   "/%c0%af/evil.test", "/%c0%afevil.test", "/%e0%80%af/evil.test", "/%c1%9c/evil.test",
                   "/%ff/x", "/a?b=%ff", "/%25c0%25af/evil.test", "/%EF%BC%85%32%66/evil.test",
                   "/%" + "25" * MAX_DECODINGS + "41", "/%", "/%2", "/%zz", "/a?b=%"]
USERINFO = ["https://app.example.test@evil.test/", "https://app.example.test:443@evil.test/",
            "https://app.example.test%2f@evil.test/", "https://app.example.test%252f@evil.test/",
            "https://app.example.test%40evil.test/", "https://app.example.test%2540evil.test/",
            "https://evil.test\\@app.example.test/", "https://evil.test%5c@app.example.test/",
            "https://user:pass@app.example.test/", "https://@app.example.test/", "https://:@app.example.test/",
            "https://app.example.test&@evil.test#@app.example.test/", "https://app.example.test+@evil.test/",
            "http://127.0.0.1:8080@evil.test/", "http://evil.test@127.0.0.1:8080/",
            "https://app.example.test%23@evil.test/", "https://app.example.test%3f@evil.test/",
            "https://app.example.test\t@evil.test/", "https://app.example.test;@evil.test/"]
SCHEMES = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "JAVASCRIPT:alert(1)", " javascript:alert(1)",
           "\tjavascript:alert(1)", "java\tscript:alert(1)", "java\nscript:alert(1)", "java\rscript:alert(1)",
           "\x01javascript:alert(1)", "\x00javascript:alert(1)", "javascript\t:alert(1)", "java%09script:alert(1)",
           "javascript:%2f%2fapp.example.test", "javascript://app.example.test/%0aalert(1)",
           "javascript://https://app.example.test/?%0aalert(1)", "javascript:https://app.example.test/",
           "data:text/html,<script>alert(1)</script>", "DATA:text/html;base64,PHNjcmlwdD4=", " data:,x",
           "data:https://app.example.test", "vbscript:msgbox(1)", "VBScript:msgbox(1)", "file:///etc/passwd",
           "FILE://app.example.test/x", "ftp://app.example.test/", "ws://app.example.test/", "wss://app.example.test/",
           "blob:https://app.example.test/0d1e", "filesystem:https://app.example.test/temporary/x",
           "view-source:https://app.example.test/", "intent://evil.test#Intent;scheme=https;end",
           "mailto:a@evil.test", "tel:123", "about:blank", "chrome://settings", "httpss://app.example.test/",
           "http+s://app.example.test/", "https+evil://app.example.test/", "hxxps://app.example.test/",
           "https%3a//app.example.test/", "https%3A%2F%2Fapp.example.test/", "%68ttps://app.example.test/",
           "ｈttps://app.example.test/", "https：//app.example.test/"]
SLASH_COUNTS = ["//evil.test", "///evil.test", "////evil.test", "//app.example.test/", "///app.example.test/",
                "https:evil.test", "https:/evil.test", "https:///evil.test", "https:////evil.test",
                "https:\\\\evil.test", "https:/\\evil.test", "https:\\/evil.test", "https://\\evil.test",
                "https:app.example.test", "https:/app.example.test/", "https:///app.example.test/",
                "https:app.example.test/x", "http:127.0.0.1:8080/", "http:/127.0.0.1:8080/", "https://",
                "https://:443/", "https:///", "https://?x", "https://#x", "\\/\\/evil.test", "/\\/\\evil.test"]
MISSING_SCHEME = ["app.example.test", "app.example.test/x", "APP.example.test:443/", "evil.test", "www.evil.test/",
                  "dashboard", "./dashboard", "../evil.test", ".evil.test", "?next=/x", "#x", "127.0.0.1:8080",
                  "127.0.0.1:8080/", ":", "@evil.test", "evil.test/\\", ";/evil.test", "~/x", "%2fdashboard",
                  "%2e/dashboard", "\u3002evil.test", "\uff0e/evil.test"]
NUMERIC_HOSTS = ["http://2130706433:8080/", "http://0x7f.1:8080/", "http://0x7f000001:8080/",
                 "http://017700000001:8080/", "http://0177.0.0.1:8080/", "http://127.1:8080/", "http://127.0.1:8080/",
                 "http://127.000.000.001:8080/", "http://0127.0.0.1:8080/", "http://127.0.0.1.:8080/",
                 "http://%31%32%37.0.0.1:8080/", "http://[::ffff:127.0.0.1]:8080/", "http://[::ffff:7f00:1]:8080/",
                 "http://[::1]:8080/", "http://[0:0:0:0:0:0:0:1]:8080/", "http://localhost:8080/",
                 "http://127.0.0.1/", "http://127.0.0.1:80/", "https://127.0.0.1:8080/", "http://127.0.0.2:8080/",
                 "http://127.0.0.1:8081/", "http://[127.0.0.1]:8080/", "http://127.0.0.1%3a8080/",
                 "http://127.0.0.1:8080%2f@evil.test/", "http://[::1%25lo]:8080/", "http://[]:8080/"]
NON_ASCII_HOSTS = ["https://аpp.example.test/", "https://app.exаmple.test/", "https://ａｐｐ.example.test/",
                   "https://app\uff0eexample.test/", "https://app.example.test\u3002/",
                   "https://app\u3002example.test/",
                   "https://app.example.test\u2024evil.test/", "https://app.example.test%E3%80%82evil.test/",
                   "https://APP.EXAMPLE.TEST\u0130/", "https://app.example.tеst/", "https://app.example.test\u200b/"]
SPLITTERS = ["https://app.example.test\\.evil.test/", "https://evil.test%23.app.example.test/",
             "https://evil.test%2f%2f.app.example.test/", "https://evil.test%3F.app.example.test/",
             "https://evil.test%5c%5c.app.example.test/", "https://app.example.test%2eevil.test/",
             "https://evil.test:443#@app.example.test/", "https://evil.test:443?@app.example.test/",
             "https://app.example.test\u2025evil.test/", "https://app.example.test/<script>", "/<>//evil.test",
             "/a\"b", "/a<b", "/a>b", "/a{b}", "/a|b", "/a^b", "/a`b", "/a[b]", "/a#b#c", "/a?b=\"c\""]

OWN = {
    "backslash": BACKSLASH, "whitespace-between": WHITESPACE_BETWEEN, "dots-and-tabs": DOTS_AND_TABS,
    "lookalike-origins": LOOKALIKE_ORIGINS, "hidden-chars": HIDDEN_CHARS, "hidden-encoded": HIDDEN_ENCODED,
    "lookalike-slashes": LOOKALIKE_SLASHES, "encoded-slashes": ENCODED_SLASHES, "userinfo": USERINFO,
    "schemes": SCHEMES, "slash-counts": SLASH_COUNTS, "missing-scheme": MISSING_SCHEME,
    "numeric-hosts": NUMERIC_HOSTS, "non-ascii-hosts": NON_ASCII_HOSTS, "splitters": SPLITTERS,
}
ALLOWED = ["/", "/dashboard", "/a/b?c=d#e", "/a%20b", "/a/b/", "/caf%C3%A9", "/%E3%82%B3%E3%83%BC%E3%83%92%E3%83%BC",
           "/search?q=a+b", "/search?q=%2F%2Fevil.test", "/search?next=https://evil.test/", "/?", "/#",
           "/#/settings?tab=1", "/.well-known/x", "/a.b/c..d/...", "/~user", "/a:b", "/@me", "/a;b=c", "/a=b&c",
           "/!$&'()*+,;=:@-._~", "/%2541", "/%" + "25" * (MAX_DECODINGS - 1) + "41", "/a%2fb", "/a%252fb",
           "/" + "a" * (MAX_RD_CHARS - 1),
           "https://app.example.test", "https://app.example.test/", "https://app.example.test/x?y=1",
           "https://APP.example.test:443/", "HTTPS://APP.EXAMPLE.TEST/", "https://app.example.test:443",
           "https://app.example.test//x", "https://app.example.test/..//x", "https://app.example.test?x=1",
           "https://app.example.test#frag", "https://app.example.test/@evil.test", "https://app.example.test/a%20b",
           "http://127.0.0.1:8080/", "http://127.0.0.1:8080", "HTTP://127.0.0.1:8080/x", "http://127.0.0.1:08080/",
           "https://www.whitelisteddomain.tld/x"]


