"""gateway.config.load: the DESIGN.md file loads as written; every mistake is a ConfigError at file:line."""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gateway.config.load import ConfigError, GatewayConfig, StoreConfig, load_config
from gateway.config.source import Problem
from tests.conftest import HS_SECRET
from tests.unit.config.config_checks import DATA, SECRET_32, assert_single, line_in, problems_of, single, write_raw

__all__ = ["write_raw"]   # a fixture, imported for pytest


# --- the DESIGN.md example --------------------------------------------------------------------

@pytest.fixture(scope="module")
def design_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/design-example.yaml next to the key files it names (keys/rsa1.pem, keys/partner.pub.pem)."""
    d = tmp_path_factory.mktemp("design")
    (d / "keys").mkdir()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "keys" / "rsa1.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "keys" / "partner.pub.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    shutil.copy(DATA / "design-example.yaml", d / "tokengate.yaml")
    return d


@pytest.fixture(scope="module")
def design(design_dir: Path) -> GatewayConfig:
    return load_config(design_dir / "tokengate.yaml", environ={"TOKENGATE_SECRET": SECRET_32})


def test_design_example_sections_load_as_written(design: GatewayConfig) -> None:
    assert (design.listen.host, design.listen.port, design.listen.workers) == ("0.0.0.0", 8080, 1)
    assert (design.admin.host, design.admin.port) == ("127.0.0.1", 9090)
    assert (design.store.url, design.store.on_error, design.store.readiness) == ("memory://", "deny", "require")
    assert dict(design.identity.headers) == {"sub": "X-User-Id", "roles": "X-User-Roles", "email": "X-User-Email"}
    assert (design.identity.claims_header, design.identity.assertion_header) == ("X-Auth-Claims", "X-Auth-Assertion")
    assert design.identity.roles_claim == "roles" and design.identity.strip_authorization is True


def test_design_example_tokens(design: GatewayConfig) -> None:
    tokens = design.tokens
    assert (tokens.issuer, tuple(tokens.audience)) == ("https://auth.example.test", ("api",))
    assert (tokens.access_ttl, tokens.refresh_ttl, tokens.leeway) == (900, 7 * 86400, 30)
    assert [(k.kid, k.alg, k.can_sign) for k in tokens.keys] == [
        ("main", "HS256", True), ("rsa1", "RS256", True), ("partner", "ES256", False)]
    assert tokens.signer is not None and tokens.signer.kid == "main"
    assert tokens.keys[0].material.secret == SECRET_32.encode()
    assert tokens.keys[1].material.private is not None and tokens.keys[2].material.private is None
    (idp,) = tokens.trusted_issuers
    assert (idp.issuer, idp.jwks_uri, tuple(idp.audience), idp.roles_claim) == (
        "https://idp.example.test", "https://idp.example.test/jwks", ("my-client",), "groups")


def test_design_example_auth(design: GatewayConfig) -> None:
    auth = design.auth
    assert (auth.prefix, auth.users, auth.signup, auth.access_cookie) == ("/auth", "store", True, False)
    cookie = auth.refresh_cookie
    assert (cookie.name, cookie.secure, cookie.samesite, cookie.path) == ("refresh_token", True, "Strict", "/auth")
    assert (auth.rate_limits.login, auth.rate_limits.refresh, auth.rate_limits.forgot_password) == (
        (5, 60), (30, 60), (3, 3600))
    # The example writes this URL unquoted inside a flow mapping: `?` and `{token}` stay part of it.
    assert auth.mail.reset_url == "https://app.example.test/reset?token={token}"
    assert (auth.mail.smtp_url, auth.mail.from_) == ("smtp://127.0.0.1:1025", "no-reply@example.test")


def test_design_example_upstreams_and_routes(design: GatewayConfig) -> None:
    accounts, orders = design.upstreams["accounts"], design.upstreams["orders"]
    assert (accounts.url, accounts.timeout, accounts.connect_timeout) == ("http://127.0.0.1:9001", 10, 2)
    assert (orders.timeout, orders.connect_timeout) == (30, 5)   # defaults
    assert [(r.path, r.methods, r.upstream, r.roles, r.public) for r in design.routes] == [
        ("/api/public", None, "accounts", None, True),
        ("/api/admin", None, "accounts", ("admin",), False),
        ("/api/orders", ("GET",), "orders", ("user", "admin"), False),
        ("/api/orders", ("POST", "DELETE"), "orders", ("admin",), False),
        ("/api/accounts/*/profile", None, "accounts", None, False),
    ]
    assert design.source.endswith("tokengate.yaml")


def test_design_example_without_its_secret_names_the_variable(design_dir: Path) -> None:
    path = design_dir / "tokengate.yaml"
    found = assert_single(path, "tokens.keys[0].secret", "{kid: main, alg: HS256")
    assert "TOKENGATE_SECRET" in found.message


def test_design_example_with_a_short_secret_is_refused_without_showing_it(design_dir: Path) -> None:
    path = design_dir / "tokengate.yaml"
    found = assert_single(path, "tokens.keys[0].secret", "{kid: main, alg: HS256", {"TOKENGATE_SECRET": "k" * 31})
    assert "k" * 31 not in str(found)


def test_design_example_without_its_key_files_reports_both(design_dir: Path, tmp_path: Path) -> None:
    shutil.copy(design_dir / "tokengate.yaml", tmp_path / "tokengate.yaml")
    problems = problems_of(tmp_path / "tokengate.yaml", {"TOKENGATE_SECRET": SECRET_32})
    assert [p.key for p in problems] == ["tokens.keys[1].private_key_file", "tokens.keys[2].public_key_file"]
    assert [p.line for p in problems] == [line_in(tmp_path / "tokengate.yaml", n) for n in ("rsa1.pem", "partner.pub")]


# --- defaults and immutability ----------------------------------------------------------------

def test_minimal_config_gets_every_default() -> None:
    cfg = load_config(DATA / "minimal.yaml", environ={"TOKENGATE_SECRET": SECRET_32})
    listen = cfg.listen
    assert (listen.host, listen.port, listen.workers, listen.trusted_proxies) == ("0.0.0.0", 8080, 1, ())
    assert (listen.header_timeout, listen.body_timeout, listen.buffer_body, listen.idle_timeout) == (10, 30, 65536, 60)
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 9090)
    assert (cfg.store.url, cfg.store.on_error) == ("memory://", "deny")
    assert (cfg.tokens.access_ttl, cfg.tokens.refresh_ttl, cfg.tokens.leeway) == (900, 7 * 86400, 30)
    assert tuple(cfg.tokens.audience) == ("api",)   # a single audience may be written as a string
    assert cfg.tokens.signing_key is None and cfg.tokens.signer is cfg.tokens.keys[0]
    assert cfg.identity.header_names == {"x-user-id", "x-user-roles", "x-user-email"}
    assert (cfg.auth.prefix, cfg.auth.users, cfg.auth.refresh_cookie.samesite) == ("/auth", "store", "Strict")
    assert (cfg.upstreams["app"].timeout, cfg.upstreams["app"].connect_timeout) == (30, 5)
    assert [(r.path, r.methods, r.roles, r.public) for r in cfg.routes] == [("/", None, None, False)]


@pytest.mark.parametrize("change", [
    lambda c: setattr(c, "routes", ()),
    lambda c: setattr(c.listen, "port", 1),
    lambda c: setattr(c.tokens.keys[0], "kid", "other"),
    lambda c: setattr(c.auth.mail, "reset_url", "x"),
    lambda c: setattr(c.routes[0], "public", True),
], ids=["top", "listen", "key", "mail", "route"])
def test_models_are_frozen(make_config: Callable[..., GatewayConfig], change: Callable[[Any], None]) -> None:
    with pytest.raises(ValidationError):
        change(make_config())


def test_lists_are_tuples_so_nothing_can_be_appended(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config()
    for value in (cfg.routes, cfg.tokens.keys, cfg.tokens.audience, cfg.routes[1].roles, cfg.listen.trusted_proxies):
        assert isinstance(value, tuple)


# --- the whole file ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# nothing\n", "null\n", "~\n", "---\n"])
def test_empty_file_is_one_problem(write_raw: Callable[[str], Path], text: str) -> None:
    assert single(problems_of(write_raw(text))).key == ""


@pytest.mark.parametrize("name, line", [("syntax-error", 3), ("unclosed-flow", 4), ("top-level-list", 1),
                                        ("duplicate-keys", 6), ("comments-only", None)])
def test_broken_sample_files(name: str, line: int | None) -> None:
    found = single(problems_of(DATA / "broken" / f"{name}.yaml", {"TOKENGATE_SECRET": SECRET_32}))
    assert (found.file, found.line) == (str(DATA / "broken" / f"{name}.yaml"), line)
    assert found.key == ("tokens.issuer" if name == "duplicate-keys" else "")


@pytest.mark.parametrize("text", ["42\n", "just text\n", "[1, 2]\n", "- a\n- b\n"])
def test_top_level_must_be_a_mapping(write_raw: Callable[[str], Path], text: str) -> None:
    found = single(problems_of(write_raw(text)))
    assert (found.line, found.key) == (1, "")


def test_three_mistakes_are_three_problems_in_file_order() -> None:
    path = DATA / "broken" / "three-mistakes.yaml"
    problems = problems_of(path, {"TOKENGATE_SECRET": SECRET_32})
    assert [(p.key, p.line) for p in problems] == [
        ("tokens.access_ttl", line_in(path, "mistake 1")),
        ("upstreams.accounts.timeuot", line_in(path, "mistake 2")),
        ("routes[1].upstream", line_in(path, "mistake 3")),
    ]
    assert str(ConfigError(problems)).count("\n") == 2
    assert str(problems[0]).startswith(f"{path}:{problems[0].line}: tokens.access_ttl: ")


def test_missing_file_and_directory_are_problems(tmp_path: Path) -> None:
    assert single(problems_of(tmp_path / "nope.yaml")).line is None
    assert single(problems_of(tmp_path)).line is None


def test_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("listen: {host: h\xf4te}\n".encode("latin-1"))
    assert single(problems_of(tmp_path / "latin1.yaml")).key == ""


def test_key_that_is_not_a_string_is_one_problem(write_raw: Callable[[str], Path]) -> None:
    path = write_raw(DATA.joinpath("minimal.yaml").read_text() + "listen: {port: 8080,\n  1: x}\n")
    found = single(problems_of(path, {"TOKENGATE_SECRET": SECRET_32}))
    assert (found.key, found.line) == ("listen.1", line_in(path, "1: x"))


def test_missing_required_sections_are_each_named(write_raw: Callable[[str], Path]) -> None:
    problems = problems_of(write_raw("listen: {port: 8080}\n"))
    assert sorted(p.key for p in problems) == ["routes", "tokens", "upstreams"]


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_top_level_key(write_config: Callable[..., Path]) -> None:
    assert_single(write_config(listn={"port": 1}), "listn", "listn:")


def test_unknown_key_in_a_key_entry(write_config: Callable[..., Path]) -> None:
    path = write_config(tokens={"keys": [{"kid": "main", "alg": "HS256", "secret": HS_SECRET, "algo": "HS256"}]})
    assert_single(path, "tokens.keys[0].algo", "algo:")


def test_unknown_key_in_a_route(write_config: Callable[..., Path]) -> None:
    routes = [{"path": "/a", "upstream": "accounts"}, {"path": "/b", "upstream": "accounts"},
              {"path": "/c", "upstream": "accounts", "role": ["admin"]}]
    assert_single(write_config(routes=routes), "routes[2].role", "role:")


@pytest.mark.parametrize("section, key", [("listen", "hots"), ("admin", "bind"), ("store", "uri"),
                                          ("identity", "header"), ("auth", "signups")])
def test_unknown_key_in_each_section(write_config: Callable[..., Path], section: str, key: str) -> None:
    assert_single(write_config(**{section: {key: "x"}}), f"{section}.{key}", f"{key}:")


def test_unknown_key_in_a_flow_mapping_points_at_its_line(write_raw: Callable[[str], Path]) -> None:
    path = write_raw(f"""\
        tokens:
          issuer: https://auth.example.test
          audience: api
          keys: [{{kid: main, alg: HS256, secret: {HS_SECRET}}}]
        upstreams:
          app: {{url: http://127.0.0.1:9001,
                timout: 5s}}
        routes: [{{path: /, upstream: app}}]
        """)
    assert_single(path, "upstreams.app.timout", "timout")


# --- durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [15, "15", "15x", "-1s", "abc", "1.5.2m", "", "1 5m", True, [15], "99999d"])
def test_bad_duration_is_refused_at_its_line(write_config: Callable[..., Path], value: Any) -> None:
    assert_single(write_config(tokens={"access_ttl": value}), "tokens.access_ttl", "access_ttl:")


@pytest.mark.parametrize("value", ["0s", "-5s", "abc"])
def test_bad_upstream_timeout(write_config: Callable[..., Path], value: str) -> None:
    path = write_config(upstreams={"accounts": {"url": "http://127.0.0.1:9001", "timeout": value}})
    assert_single(path, "upstreams.accounts.timeout", "timeout:")


@pytest.mark.parametrize("field, value", [("access_ttl", "0s"), ("refresh_ttl", "500ms"), ("leeway", "6m")])
def test_token_durations_out_of_range(write_config: Callable[..., Path], field: str, value: str) -> None:
    assert_single(write_config(tokens={field: value}), f"tokens.{field}", f"{field}:")


def test_durations_in_seconds(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(tokens={"access_ttl": "1h", "refresh_ttl": "30d", "leeway": "0s"},
                      upstreams={"accounts": {"url": "http://a.test", "timeout": "1500ms", "connect_timeout": "2s"}},
                      listen={"drain_timeout": "1m"})
    assert (cfg.tokens.access_ttl, cfg.tokens.refresh_ttl, cfg.tokens.leeway) == (3600, 30 * 86400, 0)
    assert (cfg.upstreams["accounts"].timeout, cfg.upstreams["accounts"].connect_timeout) == (1.5, 2)
    assert cfg.listen.drain_timeout == 60


# --- ${VAR} substitution -----------------------------------------------------------------------

VAR_CONFIG = """\
    tokens:
      issuer: "ISSUER"
      audience: api
      keys:
        - {kid: main, alg: HS256, secret: "${TG_TEST_SECRET}"}
    upstreams:
      app: {url: "http://127.0.0.1:${TG_TEST_PORT:-9001}"}
    routes:
      - {path: /, upstream: app}
    """


def _var_config(write_raw: Callable[[str], Path], issuer: str) -> Path:
    return write_raw(VAR_CONFIG.replace("ISSUER", issuer))


def test_secret_comes_from_the_environment(write_raw: Callable[[str], Path]) -> None:
    cfg = load_config(_var_config(write_raw, "https://a.test"), environ={"TG_TEST_SECRET": SECRET_32})
    assert cfg.tokens.keys[0].material.secret == SECRET_32.encode()
    assert cfg.upstreams["app"].url == "http://127.0.0.1:9001"   # ${VAR:-default}, VAR unset


@pytest.mark.parametrize("environ", [{}, {"TG_TEST_SECRET": ""}], ids=["unset", "empty"])
def test_missing_secret_variable_is_one_problem_naming_it(write_raw: Callable[[str], Path],
                                                          environ: dict[str, str]) -> None:
    path = _var_config(write_raw, "https://a.test")
    found = single(problems_of(path, environ))
    assert (found.key, found.line) == ("tokens.keys[0].secret", line_in(path, "TG_TEST_SECRET"))
    if not environ:
        assert "TG_TEST_SECRET" in found.message


@pytest.mark.parametrize("environ, url", [
    ({"TG_TEST_PORT": "9100"}, "http://127.0.0.1:9100"),
    ({"TG_TEST_PORT": ""}, "http://127.0.0.1:9001"),   # like the shell's :- an empty value takes the default
])
def test_default_applies_when_unset_or_empty(write_raw: Callable[[str], Path], environ: dict[str, str],
                                             url: str) -> None:
    cfg = load_config(_var_config(write_raw, "https://a.test"), environ={"TG_TEST_SECRET": SECRET_32, **environ})
    assert cfg.upstreams["app"].url == url


@pytest.mark.parametrize("written, loaded", [
    ("https://a.test/$$x", "https://a.test/$x"),
    ("https://a.test/$${NOT_A_VAR}", "https://a.test/${NOT_A_VAR}"),
    ("https://a.test/cost$5", "https://a.test/cost$5"),
    ("${TG_TEST_HOST:-https://default.test}", "https://default.test"),
    ("https://${TG_TEST_HOST:-a.test}:${TG_TEST_PORT:-1}", "https://a.test:1"),
])
def test_substitution_forms(write_raw: Callable[[str], Path], written: str, loaded: str) -> None:
    cfg = load_config(_var_config(write_raw, written), environ={"TG_TEST_SECRET": SECRET_32})
    assert cfg.tokens.issuer == loaded


@pytest.mark.parametrize("written", ["https://a.test/${", "${oops", "${1ABC}", "${A:default}", "${A-b}", "${}"])
def test_malformed_variable_reference(write_raw: Callable[[str], Path], written: str) -> None:
    path = _var_config(write_raw, written)
    found = assert_single(path, "tokens.issuer", "issuer:", {"TG_TEST_SECRET": SECRET_32})
    assert written not in found.message


def test_variable_can_fill_a_number(write_raw: Callable[[str], Path]) -> None:
    path = write_raw(VAR_CONFIG.replace("ISSUER", "https://a.test") + "listen: {port: '${TG_TEST_LISTEN}'}\n")
    cfg = load_config(path, environ={"TG_TEST_SECRET": SECRET_32, "TG_TEST_LISTEN": "8181"})
    assert cfg.listen.port == 8181


# --- listen, admin, store ----------------------------------------------------------------------

def test_slow_client_limits_take_durations_and_sizes(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(listen={"header_timeout": "5s", "body_timeout": "2m", "buffer_body": "1MiB",
                              "idle_timeout": "500ms"})
    listen = cfg.listen
    assert (listen.header_timeout, listen.body_timeout, listen.buffer_body, listen.idle_timeout) == (5, 120, 1 << 20,
                                                                                                     0.5)


def test_trusted_proxies_are_networks(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(listen={"trusted_proxies": ["10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8", "10.1.2.3/16"]})
    assert cfg.listen.trusted_proxies == tuple(ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8", "10.1.0.0/16"))


@pytest.mark.parametrize("junk", ["junk", "10.0.0.0/33", "300.1.1.1", 7, ""])
def test_trusted_proxies_refuse_junk(write_config: Callable[..., Path], junk: Any) -> None:
    path = write_config(listen={"trusted_proxies": ["10.0.0.0/8", junk]})
    assert single(problems_of(path)).key == "listen.trusted_proxies[1]"


@pytest.mark.parametrize("listen", [{"port": 70000}, {"port": -1}, {"workers": 0}, {"port": "http"},
                                    {"header_timeout": "0s"}, {"body_timeout": 30}, {"idle_timeout": "soon"},
                                    {"buffer_body": "lots"}, {"buffer_body": "17MiB"}, {"buffer_body": "1.5KiB"}])
def test_bad_listen_values(write_config: Callable[..., Path], listen: dict[str, Any]) -> None:
    (key,) = listen
    assert single(problems_of(write_config(listen=listen))).key == f"listen.{key}"


def test_admin_port_must_differ_from_listen_port(write_config: Callable[..., Path]) -> None:
    path = write_config(listen={"host": "0.0.0.0", "port": 8080}, admin={"port": 8080})
    assert single(problems_of(path)).key == "admin.port"


@pytest.mark.parametrize("url", ["http://redis.test", "redis", "mysql://x", "redis://h:notaport"])
def test_store_url_scheme(write_config: Callable[..., Path], url: str) -> None:
    path = write_config(store={"url": url})
    found = single(problems_of(path))
    assert (found.key, found.line) == ("store.url", line_in(path, "store:") + 1)


@pytest.mark.parametrize("url", ["memory://", "redis://localhost:6379/0", "rediss://:pw@r.test", "unix:///tmp/r.sock",
                                 "redis+sentinel://:pw@s1:26379,s2:26379/mymaster", "redis+cluster://r1,r2"])
def test_store_url_accepted(make_config: Callable[..., GatewayConfig], url: str) -> None:
    assert make_config(store={"url": url}).store.url == url


@pytest.mark.parametrize("url, safe", [
    ("redis://user:s3cret@r.test:6379/0", "redis://user:***@r.test:6379/0"),
    ("rediss://:s3cret@r.test", "rediss://:***@r.test"),
    ("redis://:p@ss:s3cret@r.test", "redis://:***@r.test"),
    ("redis+sentinel://:s3cret@s1:26379,s2:26379/m", "redis+sentinel://:***@s1:26379,s2:26379/m"),
    ("redis://r.test/0?password=s3cret&db=1", "redis://r.test/0?password=***&db=1"),
    ("redis+sentinel://s1:26379/m?sentinel_password=s3cret&password=pw2",
     "redis+sentinel://s1:26379/m?sentinel_password=***&password=***"),
    ("redis://user@r.test", "redis://user@r.test"),
    ("memory://", "memory://"),
])
def test_safe_url_hides_the_password(url: str, safe: str) -> None:
    assert StoreConfig(url=url).safe_url == safe


def test_store_on_error(write_config: Callable[..., Path], make_config: Callable[..., GatewayConfig]) -> None:
    assert make_config(store={"on_error": "allow"}).store.on_error == "allow"
    assert single(problems_of(write_config(store={"on_error": "open"}))).key == "store.on_error"


def test_store_readiness(write_config: Callable[..., Path], make_config: Callable[..., GatewayConfig]) -> None:
    assert make_config().store.readiness == "require"
    assert make_config(store={"readiness": "ignore"}).store.readiness == "ignore"
    assert single(problems_of(write_config(store={"readiness": "never"}))).key == "store.readiness"


# --- identity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X User", "X-User:", "", "Host", "authorization", "Cookie", "X-Forwarded-For",
                                  "Content-Length", "X-Request-Id", "x-forwarded-uri"])
def test_bad_identity_header_name(write_config: Callable[..., Path], name: str) -> None:
    path = write_config(identity={"headers": {"sub": "X-User-Id", "roles": name}})
    assert single(problems_of(path)).key == "identity.headers.roles"


def test_identity_header_used_twice(write_config: Callable[..., Path]) -> None:
    path = write_config(identity={"claims_header": "x-user-id"})
    assert_single(path, "identity.claims_header", "claims_header:")


def test_identity_header_names_for_stripping(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(identity={"headers": {"sub": "X-Sub"}, "assertion_header": "X-Assert"})
    assert cfg.identity.header_names == {"x-sub", "x-assert"}


# --- never anything but ConfigError ------------------------------------------------------------

def test_every_problem_is_a_problem_with_a_key_string(write_config: Callable[..., Path]) -> None:
    path = write_config(listen={"port": "x", "workers": 0, "extra": 1}, tokens={"leeway": "1y"},
                        routes=[{"path": "x", "upstream": "none", "methods": []}])
    problems = problems_of(path)
    assert len(problems) == 7
    assert all(isinstance(p, Problem) and isinstance(p.line, int) for p in problems)
    assert [p.line for p in problems] == sorted(p.line for p in problems)   # type: ignore[type-var]


def test_assertion_header_needs_an_asymmetric_signing_key(write_config):
    from tests.conftest import HS_SECRET

    only_hmac = {"keys": [{"kid": "main", "alg": "HS256", "secret": HS_SECRET}], "signing_key": "main"}
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tokens=only_hmac, identity={"assertion_header": "X-Auth-Assertion"}))
    assert [p.key for p in exc.value.problems] == ["identity.assertion_header"]
    cfg = load_config(write_config(identity={"assertion_header": "X-Auth-Assertion"}))
    assert cfg.tokens.assertion_signer.kid == "rsa1"


def test_admin_token_must_be_long(write_config: Callable[..., Path]) -> None:
    path = write_config(admin={"token": "short"})
    assert single(problems_of(path)).key == "admin.token"


# --- the configs the repository ships ----------------------------------------------------------

REPO = DATA.parent.parent


def test_demo_config_loads() -> None:
    cfg = load_config(REPO / "config" / "demo.yaml", environ={"TOKENGATE_SECRET": SECRET_32})
    assert len(cfg.routes) == 5


def test_load_test_config_of_a_thousand_routes_loads(tmp_path: Path) -> None:
    from loadtests.benchconfig import write_bench_config

    write_bench_config(tmp_path / "bench.yaml", 1000)
    cfg = load_config(tmp_path / "bench.yaml", environ={"TOKENGATE_SECRET": SECRET_32})
    assert len(cfg.routes) == 1000
