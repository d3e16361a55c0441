"""YAML file -> frozen, validated config objects (pydantic v2). Loaded once, at start.

``load_config(path)`` returns a ``GatewayConfig`` or raises ``ConfigError`` carrying every
problem found, each with its file:line and key path. Key files are read and parsed here too,
so a key that does not load is a config error, never a request-time surprise.
The ``tokens``, ``auth`` and ``upstreams``/``routes`` models live in config/tokens.py, config/auth.py
and config/routes.py; every name is importable from here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, field_validator,
                      model_validator)

from .auth import (AuthConfig, CookieConfig, CredentialsUrlConfig, MailConfig, RateLimitsConfig, UsersConfig,
                   UsersFileConfig)
from .fields import TOKEN_CHARS, ByteSize, Duration, Invalid, KeyPath, Model, Rate, StrList, raise_found, suggest_key
from .keyfiles import KeyMaterial, load_key_material
from .providers import (GithubProviderConfig, OidcProviderConfig, ProviderConfig, RolesMapConfig, client_secret_problem,
                        mapped_role_problems)
from .routes import RouteConfig, UpstreamConfig, UpstreamName, upstream_problems
from .rules import RuleConflict, RuleSet
from .source import Problem, Source, read_source
from .tls import TlsConfig
from .tokens import HMAC_MIN_BYTES, Algorithm, DpopConfig, KeyConfig, TokensConfig, TrustedIssuerConfig, key_problems

__all__ = ["AdminConfig", "Algorithm", "AuthConfig", "ConfigError", "CookieConfig", "CredentialsUrlConfig",
           "DpopConfig", "Duration", "GatewayConfig", "GithubProviderConfig", "HMAC_MIN_BYTES", "IdentityConfig", "KeyConfig",
           "KeyMaterial", "ListenConfig", "MailConfig", "OidcProviderConfig", "Problem", "ProviderConfig", "Rate",
           "RateLimitsConfig", "RolesMapConfig", "RouteConfig", "StoreConfig",
           "StrList", "TlsConfig", "TokensConfig", "TrustedIssuerConfig", "UpstreamConfig", "UsersConfig",
           "UsersFileConfig",
           "load_config", "load_key_material"]

# Headers that an identity mapping may never claim: they belong to HTTP itself or to the gateway.
_RESERVED_HEADERS = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                     "trailer", "upgrade", "content-length", "content-type", "content-encoding", "cookie",
                     "set-cookie", "authorization", "proxy-authorization", "www-authenticate",
                     "proxy-authenticate", "forwarded", "x-real-ip", "x-forwarded-for", "x-forwarded-proto",
                     "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-uri",
                     "x-forwarded-method", "x-request-id"}


class ConfigError(Exception):
    """The config cannot be used. ``problems`` lists every reason, each with file:line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _header_name(value: str) -> str:
    if not TOKEN_CHARS.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    if value.lower().replace("_", "-") in _RESERVED_HEADERS:   # X_Forwarded_For is X-Forwarded-For to many servers
        raise ValueError(f"{value!r} is managed by HTTP or by the gateway and cannot carry identity")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _network(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("write each trusted proxy as an IP address or CIDR network, like 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network, like 10.0.0.0/8") from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


class ListenConfig(Model):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    drain_timeout: Duration = 10.0          # SIGTERM: how long requests in flight may take to finish
    trusted_proxies: tuple[Network, ...] = ()  # peers that may set X-Forwarded-* / X-Original-*
    header_timeout: Duration = 10.0          # longest time to read a request head
    body_timeout: Duration = 30.0            # longest silence while reading a request body (or the client
                                             # not reading an answer)
    buffer_body: ByteSize = 64 * 1024        # bodies up to this size are read whole before an upstream is asked
    idle_timeout: Duration = 60.0            # a keep-alive connection with no request in flight closes after this
    tls: TlsConfig | None = None             # serve the proxy port over TLS (the admin port stays plain HTTP)
    client_cert_header: str | None = None    # a trusted proxy's header with the client's certificate (URL-encoded
                                             # PEM, nginx's $ssl_client_escaped_cert), for certificate-bound tokens

    @field_validator("client_cert_header")
    @classmethod
    def _cert_header_name(cls, value: str | None) -> str | None:
        if value is not None and not TOKEN_CHARS.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        if value is not None and value.lower().replace("_", "-") in _RESERVED_HEADERS:
            raise ValueError(f"{value!r} is managed by HTTP or by the gateway; name a header of its own, "
                             "like X-Client-Cert")
        return value

    @model_validator(mode="after")
    def _cert_header_has_proxies(self) -> ListenConfig:
        # Refused rather than warned about: the header would never be believed, and a bound token would be
        # refused on every request with nothing in the config saying why.
        if self.client_cert_header is not None and not self.trusted_proxies:
            raise Invalid((("client_cert_header",), "the header is believed only from listen.trusted_proxies, "
                                                     "which is empty: add the TLS-terminating proxy's address there"))
        return self

    @field_validator("header_timeout", "body_timeout", "idle_timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("buffer_body")
    @classmethod
    def _bounded_buffer(cls, value: int) -> int:
        if value > 16 * 1024 * 1024:
            raise ValueError("must be at most 16MiB: each request in progress may hold this much memory")
        return value


ADMIN_TOKEN_MIN_CHARS = 32


class AdminConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    token: SecretStr | None = None   # when set, /admin/* needs `Authorization: Bearer <token>`
    metrics: bool = True             # /metrics (Prometheus), behind the token when one is set

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < ADMIN_TOKEN_MIN_CHARS:
            raise ValueError(f"an admin token needs at least {ADMIN_TOKEN_MIN_CHARS} characters; generate one "
                             "with `head -c 32 /dev/urandom | base64`")
        return value


STORE_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
                 "rediss+cluster")


class StoreConfig(Model):
    url: str = "memory://"
    on_error: Literal["deny", "allow"] = "deny"
    readiness: Literal["require", "ignore"] = "require"   # /readyz: fails while the store is down, or not

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            if parts.scheme in ("redis", "rediss"):
                parts.port   # noqa: B018 - raises ValueError on a bad port (sentinel/cluster list several hosts)
        except ValueError:
            raise ValueError("store url is not a valid URL (check the host and port)") from None
        if parts.scheme not in STORE_SCHEMES:
            raise ValueError(f"store url scheme must be one of {', '.join(s + '://' for s in STORE_SCHEMES)}")
        return value

    @property
    def safe_url(self) -> str:
        """The URL without its passwords (the user part's, and every ``...password=`` parameter such as
        ``sentinel_password=``), for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc
        userinfo, at, hostport = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
        query = re.sub(r"(?i)(^|&)([^&=]*password=)[^&]*", r"\1\2***", parts.query)
        if (netloc, query) == (parts.netloc, parts.query):
            return self.url   # geturl() would turn memory:// into memory:
        return parts._replace(netloc=netloc, query=query).geturl()


class IdentityConfig(Model):
    roles_claim: str = Field("roles", min_length=1)
    headers: dict[str, HeaderName] = {"sub": "X-User-Id", "roles": "X-User-Roles", "email": "X-User-Email"}
    claims_header: HeaderName | None = None
    assertion_header: HeaderName | None = None
    strip_authorization: bool = True

    def _named(self) -> list[tuple[KeyPath, str]]:
        named: list[tuple[KeyPath, str | None]] = [(("headers", k), v) for k, v in self.headers.items()]
        named += [(("claims_header",), self.claims_header), (("assertion_header",), self.assertion_header)]
        return [(where, name) for where, name in named if name]

    @model_validator(mode="after")
    def _distinct_headers(self) -> IdentityConfig:
        seen: set[str] = set()
        found = []
        for where, name in self._named():
            if name.lower() in seen:
                found.append((where, f"header {name!r} is already used for another identity field; "
                                     "each identity header name may be used only once"))
            seen.add(name.lower())
        raise_found(found)
        return self

    @property
    def header_names(self) -> frozenset[str]:
        """Every header the gateway sets from identity, lower-cased; clients may never send them."""
        return frozenset(name.lower() for _, name in self._named())


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access: bool = True          # one line a proxied or auth request (logger tokengate.access)


class ReloadConfig(Model):
    watch: bool = False          # also reload when the config file changes on disk, as on SIGHUP
    interval: Duration = 2.0     # how often the file is looked at

    @field_validator("interval")
    @classmethod
    def _sane_interval(cls, value: float) -> float:
        if not 0.1 <= value <= 3600:
            raise ValueError("must be between 100ms and 1h")
        return value


class GatewayConfig(Model):
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    tokens: TokensConfig
    identity: IdentityConfig = IdentityConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()
    reload: ReloadConfig = ReloadConfig()
    upstreams: dict[UpstreamName, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    _source: str = ""
    _rules: RuleSet | None = None   # the routes compiled: by load_config, which checks them for conflicts

    @field_validator("upstreams")
    @classmethod
    def _some_upstream(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        if not value:
            raise ValueError("configure at least one upstream, like `app: {url: http://127.0.0.1:9001}`")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> GatewayConfig:
        found = upstream_problems([r.upstream for r in self.routes], self.upstreams)
        wildcard = ("0.0.0.0", "::", "")
        if (self.admin.port and self.admin.port == self.listen.port
                and (self.admin.host == self.listen.host or {self.admin.host, self.listen.host} & set(wildcard))):
            found.append((("admin", "port"), f"port {self.admin.port} is also listen.port; the admin port "
                                             "must be a different one"))
        if self.identity.assertion_header and self.tokens.assertion_signer is None:
            found.append((("identity", "assertion_header"),
                          "the assertion is verified by upstreams with the public JWKS, so it needs an "
                          "asymmetric key that can sign: add an RS256, ES256 or EdDSA key with a "
                          "private_key_file to tokens.keys"))
        cert_header = self.listen.client_cert_header
        identity_headers = {name.replace("_", "-") for name in self.identity.header_names}
        if cert_header and cert_header.lower().replace("_", "-") in identity_headers:
            found.append((("listen", "client_cert_header"), f"{cert_header!r} is also an identity header, which the "
                                                            "gateway sets itself; name another header"))
        found += self._unknown_mapped_roles()
        raise_found(found)
        return self

    def _unknown_mapped_roles(self) -> list[tuple[KeyPath, str]]:
        known = set(self.auth.default_roles) | {role for route in self.routes for role in route.roles or ()}
        return mapped_role_problems(known, [(name, p.roles.map, p.roles.default or ())
                                            for name, p in self.auth.providers.items()])

    @property
    def source(self) -> str:
        """The file this config was loaded from."""
        return self._source

    @property
    def rules(self) -> RuleSet:
        """The routes compiled into the trie requests are matched against: the one load_config built
        while checking the routes for conflicts, or (a config made otherwise, or unpickled) built now,
        once."""
        if self._rules is None:
            self._rules = RuleSet.compile(self.routes)
        return self._rules

    async def rules_in_slices(self) -> RuleSet:
        """``rules``, built letting the event loop run between slices of routes when they are not built
        yet: what a serving worker does with a config it is handed for a reload."""
        if self._rules is None:
            self._rules = await RuleSet.compile_in_slices(self.routes)
        return self._rules

    def __getstate__(self) -> dict[Any, Any]:
        """Pickled without the compiled routes (the fork of a worker, a reload's handoff): unpickling
        the trie would hold the receiving loop in one piece, building it in slices does not."""
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private["_rules"] = None
        return {**state, "__pydantic_private__": private}


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, substitute, validate. Raises ConfigError (and nothing else) listing every problem."""
    src = read_source(path, environ)
    if src.data is None:
        raise ConfigError(src.problems)
    try:
        cfg = GatewayConfig.model_validate(src.data, context={"base_dir": Path(path).parent})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            for where, message in _explain(err, src.data):
                _report(src, where, message)
        # Cross-references are checked on the raw data too: pydantic skips them when any part fails,
        # and check-config should show every mistake at once.
        for where, message in _raw_cross_references(src.data):
            _report(src, where, message)
    else:
        cfg._source = str(path)
        _compile_rules(cfg, src)
    if src.problems:
        raise ConfigError(sorted(src.problems, key=lambda p: p.line or 0))
    return cfg


def _report(src: Source, where: KeyPath, message: str) -> None:
    """Add a validation problem, unless reading that value already failed (an unset variable ...)."""
    if not any(where[:end] in src.bad_values for end in range(len(where) + 1)):
        src.problem(where, message)


def _compile_rules(cfg: GatewayConfig, src: Source) -> None:
    try:
        cfg._rules = RuleSet.compile(cfg.routes)
    except RuleConflict as exc:
        other = src.line_of(("routes", exc.first))
        where = f"{src.file}:{other}" if other else f"routes[{exc.first}]"
        src.problem(("routes", exc.second), f"{exc.reason} (the other route is routes[{exc.first}] at {where})")
    except ValueError as exc:
        src.problem(("routes",), str(exc))


def _raw_cross_references(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    found: list[tuple[KeyPath, str]] = []
    tokens = data.get("tokens")
    if isinstance(tokens, dict) and isinstance(tokens.get("keys"), list):
        keys = [(k.get("kid"), k.get("secret") is not None or k.get("private_key_file") is not None)
                if isinstance(k, dict) else (None, False) for k in tokens["keys"]]
        found += [(("tokens", *where), m) for where, m in key_problems(keys, tokens.get("signing_key"))]
    upstreams, routes = data.get("upstreams"), data.get("routes")
    if isinstance(upstreams, dict) and isinstance(routes, list):
        found += upstream_problems([r.get("upstream") if isinstance(r, dict) else None for r in routes],
                                   upstreams)
    found += _raw_mapped_roles(data)
    return found


def _raw_mapped_roles(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    auth, routes = data.get("auth"), data.get("routes")
    providers = auth.get("providers") if isinstance(auth, dict) else None
    if not isinstance(providers, dict) or not isinstance(routes, list):
        return []
    # The model checks of the providers run only when every field of the config is valid.
    defaults = auth.get("default_roles", ["user"])
    known = set(defaults if isinstance(defaults, list) else [defaults])
    known |= {role for r in routes if isinstance(r, dict) and isinstance(r.get("roles"), list) for role in r["roles"]}
    maps, found = [], []
    for name, provider in providers.items():
        if not isinstance(provider, dict):
            continue
        default_auth = "client_secret_post" if provider.get("type") == "github" else "client_secret_basic"
        problem = client_secret_problem(provider.get("client_auth", default_auth), provider.get("client_secret"))
        if problem:
            found.append((("auth", "providers", name, "client_secret"), problem))
        roles = provider.get("roles")
        if isinstance(roles, dict):
            mapping, default = roles.get("map"), roles.get("default")
            maps.append((name, mapping if isinstance(mapping, dict) else {},
                         default if isinstance(default, list) else [default] if isinstance(default, str) else []))
    return found + mapped_role_problems(known, maps)


def _explain(err: Any, data: Any) -> list[tuple[KeyPath, str]]:
    """One pydantic error -> (key path in the YAML data, message) pairs."""
    loc = tuple(err["loc"])
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, Invalid):
        return [(_data_path(data, loc + sub, name_missing=True), message) for sub, message in error.found]
    message = _message(err)
    if err["type"] == "extra_forbidden" and (close := suggest_key(GatewayConfig, loc)):
        message = f"unknown key; did you mean `{close}`?"
    return [(_data_path(data, loc, name_missing=err["type"] == "missing"), message)]


def _data_path(data: Any, loc: tuple[str | int, ...], *, name_missing: bool) -> KeyPath:
    """Drop the parts of a pydantic error location that are not keys of the data (union members)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif name_missing and isinstance(node, dict) and isinstance(part, str) and i == len(loc) - 1:
            path.append(part)   # a key that should be there: name it (its line is its parent's)
            break
        else:
            continue
        path.append(part)
    return tuple(path)


_MESSAGES = {
    "missing": "this key is required",
    "extra_forbidden": "unknown key (check its spelling and where it is placed)",
    "model_type": "this should be a mapping of keys and values",
    "model_attributes_type": "this should be a mapping of keys and values",
    "dict_type": "this should be a mapping of keys and values",
    "list_type": "this should be a list",
    "tuple_type": "this should be a list",   # lists are kept as tuples, so that nothing can change them
    "string_type": "this should be a string",
}


def _message(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ").replace("Tuple should", "List should")
