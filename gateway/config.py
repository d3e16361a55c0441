"""YAML file -> frozen, validated config objects (pydantic v2). Loaded once, at start.

``load_config(path)`` returns a ``GatewayConfig`` or raises ``ConfigError`` carrying every
problem found, each with its file:line and key path. Key files are read and parsed here too,
so a key that does not load is a config error, never a request-time surprise.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      SecretStr, Tag, ValidationError, ValidationInfo, field_validator, model_validator)

from .durations import parse_duration_s, parse_rate
from .keyfiles import KeyMaterial, load_key_material
from .source import Problem, Source, read_source

Duration = Annotated[float, BeforeValidator(parse_duration_s)]
Rate = Annotated[tuple[int, int], BeforeValidator(parse_rate)]
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}   # RFC 7518 3.2: at least the hash size
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                    "ES256", "ES384", "ES512", "EdDSA"]
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that an identity mapping may never claim: they belong to HTTP itself.
_RESERVED_HEADERS = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                     "trailer", "upgrade", "content-length", "content-type", "cookie", "authorization",
                     "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}


class ConfigError(Exception):
    """The config cannot be used. ``problems`` lists every reason, each with file:line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _header_name(value: str) -> str:
    if not _TOKEN_CHARS.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} is managed by HTTP or by the gateway and cannot carry identity")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _str_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_str_list)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ListenConfig(Model):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    drain_timeout: Duration = 10.0          # SIGTERM: how long requests in flight may take to finish
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []   # may set X-Forwarded-*

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v for v in value]


class AdminConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)


STORE_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
                 "rediss+cluster")


class StoreConfig(Model):
    url: str = "memory://"
    on_error: Literal["deny", "allow"] = "deny"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in STORE_SCHEMES:
            raise ValueError(f"store url scheme must be one of {', '.join(s + '://' for s in STORE_SCHEMES)}")
        return value

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


class KeyConfig(Model):
    kid: str = Field(min_length=1)
    alg: Algorithm
    secret: SecretStr | None = None
    private_key_file: Path | None = None
    public_key_file: Path | None = None
    _material: KeyMaterial | None = None

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> KeyConfig:
        sources = [n for n in ("secret", "private_key_file", "public_key_file") if getattr(self, n) is not None]
        if self.alg.startswith("HS"):
            if sources != ["secret"]:
                raise ValueError(f"an {self.alg} key takes a `secret` and no key file")
            secret = self.secret.get_secret_value().encode()   # type: ignore[union-attr]
            if len(secret) < HMAC_MIN_BYTES[self.alg]:
                raise ValueError(f"an {self.alg} secret needs at least {HMAC_MIN_BYTES[self.alg]} bytes "
                                 f"(this one has {len(secret)}); generate one with `tokengate keys generate`")
            self._material = KeyMaterial(self.alg, secret=secret)
            return self
        if len(sources) != 1 or sources == ["secret"]:
            raise ValueError(f"an {self.alg} key takes exactly one of `private_key_file` or `public_key_file`")
        base = (info.context or {}).get("base_dir", Path("."))
        path = getattr(self, sources[0])
        self._material = load_key_material(self.alg, base / path, private=sources[0] == "private_key_file")
        return self

    @property
    def material(self) -> KeyMaterial:
        assert self._material is not None
        return self._material

    @property
    def can_sign(self) -> bool:
        return self.secret is not None or self.private_key_file is not None


class TrustedIssuerConfig(Model):
    issuer: str = Field(min_length=1)
    jwks_uri: str
    audience: StrList = []
    roles_claim: str | None = None
    algorithms: list[Algorithm] = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]

    @field_validator("jwks_uri")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
            raise ValueError("jwks_uri must be an http:// or https:// URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _no_hmac(cls, value: list[str]) -> list[str]:
        if not value or any(a.startswith("HS") for a in value):
            raise ValueError("a trusted issuer is verified with public keys: list asymmetric algorithms only")
        return value


class TokensConfig(Model):
    issuer: str = Field(min_length=1)
    audience: StrList = Field(min_length=1)
    access_ttl: Duration = 900.0
    refresh_ttl: Duration = 7 * 86400.0
    leeway: Duration = 30.0
    signing_key: str | None = None
    keys: list[KeyConfig] = []
    trusted_issuers: list[TrustedIssuerConfig] = []

    @field_validator("access_ttl", "refresh_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("leeway")
    @classmethod
    def _small_leeway(cls, value: float) -> float:
        if value > 300:
            raise ValueError("a leeway above 5m would keep expired tokens alive; use at most 5m")
        return value

    @model_validator(mode="after")
    def _keys_consistent(self) -> TokensConfig:
        if not self.keys and not self.trusted_issuers:
            raise ValueError("configure at least one key (or a trusted issuer): nothing could be verified")
        seen: set[str] = set()
        for key in self.keys:
            if key.kid in seen:
                raise ValueError(f"two keys share the kid {key.kid!r}; each kid must be unique")
            seen.add(key.kid)
        if self.signing_key is not None:
            chosen = next((k for k in self.keys if k.kid == self.signing_key), None)
            if chosen is None:
                raise ValueError(f"signing_key {self.signing_key!r} names no key in tokens.keys")
            if not chosen.can_sign:
                raise ValueError(f"signing_key {self.signing_key!r} has only a public key; it cannot sign")
        issuers = [t.issuer for t in self.trusted_issuers]
        if self.issuer in issuers or len(set(issuers)) != len(issuers):
            raise ValueError("each issuer (ours and the trusted ones) may appear only once")
        return self

    @property
    def signer(self) -> KeyConfig | None:
        """The key new tokens are signed with: ``signing_key``, else the first key able to sign."""
        if self.signing_key is not None:
            return next(k for k in self.keys if k.kid == self.signing_key)
        return next((k for k in self.keys if k.can_sign), None)


class IdentityConfig(Model):
    roles_claim: str = "roles"
    headers: dict[str, HeaderName] = {"sub": "X-User-Id", "roles": "X-User-Roles", "email": "X-User-Email"}
    claims_header: HeaderName | None = None
    assertion_header: HeaderName | None = None
    strip_authorization: bool = True

    @model_validator(mode="after")
    def _distinct_headers(self) -> IdentityConfig:
        names = [*self.headers.values(), self.claims_header, self.assertion_header]
        lowered = [n.lower() for n in names if n]
        if len(set(lowered)) != len(lowered):
            raise ValueError("each identity header name may be used only once")
        return self

    @property
    def header_names(self) -> frozenset[str]:
        """Every header the gateway sets from identity, lower-cased; clients may never send them."""
        names = [*self.headers.values(), self.claims_header, self.assertion_header]
        return frozenset(n.lower() for n in names if n)


class UsersFileConfig(Model):
    file: Path


class CredentialsUrlConfig(Model):
    credentials_url: str

    @field_validator("credentials_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
            raise ValueError("credentials_url must be an http:// or https:// URL")
        return value


def _users_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "credentials" if "credentials_url" in value else "file"
    return "store"


UsersConfig = Annotated[Union[Annotated[Literal["store"], Tag("store")],
                              Annotated[UsersFileConfig, Tag("file")],
                              Annotated[CredentialsUrlConfig, Tag("credentials")]],
                        Discriminator(_users_kind)]


class CookieConfig(Model):
    name: str = Field("refresh_token", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    secure: bool = True
    samesite: Literal["Strict", "Lax", "None"] = "Strict"
    path: str = Field("/auth", pattern=r"^/")

    @model_validator(mode="after")
    def _none_needs_secure(self) -> CookieConfig:
        if self.samesite == "None" and not self.secure:
            raise ValueError("SameSite=None cookies must also be Secure (browsers drop them otherwise)")
        return self


class RateLimitsConfig(Model):
    login: Rate = (5, 60)
    refresh: Rate = (30, 60)
    forgot_password: Rate = (3, 3600)


class MailConfig(Model):
    smtp_url: str = "smtp://127.0.0.1:1025"
    from_: str = Field("no-reply@example.test", alias="from")
    reset_url: str = "http://127.0.0.1:8080/reset?token={token}"

    @field_validator("smtp_url")
    @classmethod
    def _smtp_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("smtp", "smtps") or not urlsplit(value).hostname:
            raise ValueError("smtp_url must look like smtp://host:port or smtps://host:port")
        return value

    @field_validator("reset_url")
    @classmethod
    def _has_token(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("reset_url must contain {token}, where the reset token goes")
        return value


class AuthConfig(Model):
    prefix: str = Field("/auth", pattern=r"^/[A-Za-z0-9._~/-]*[^/]$")
    users: UsersConfig = "store"
    signup: bool = True
    refresh_cookie: CookieConfig = CookieConfig()
    access_cookie: bool = False
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    mail: MailConfig = MailConfig()


class UpstreamConfig(Model):
    url: str
    timeout: Duration = 30.0
    connect_timeout: Duration = 5.0
    max_connections: int = Field(100, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream url is http://host[:port][/base] or https://...")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("an upstream url takes no query, fragment or credentials")
        try:
            parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in upstream url: {exc}") from None
        return value

    @field_validator("timeout", "connect_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0s")
        return value


class RouteConfig(Model):
    path: str
    upstream: str
    methods: list[str] | None = None
    roles: list[Annotated[str, Field(min_length=1)]] | None = None
    public: bool = False
    name: str | None = None

    @field_validator("path")
    @classmethod
    def _clean_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a route path starts with /")
        segments = [s for s in value.split("/") if s]
        for seg in segments:
            if seg in (".", "..") or "%" in seg or ";" in seg or "\\" in seg or "\x00" in seg:
                raise ValueError(f"segment {seg!r} cannot match a normalised path; write the path as clients "
                                 "reach it after normalisation (no dot segments, % escapes or ;)")
            if "*" in seg and seg != "*":
                raise ValueError(f"`*` stands for one whole segment; {seg!r} mixes it with text")
        return "/" + "/".join(segments)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("leave `methods` out to allow every method; an empty list matches nothing")
        out = []
        for m in value:
            if not _TOKEN_CHARS.fullmatch(m):
                raise ValueError(f"{m!r} is not an HTTP method")
            out.append(m.upper())
        if len(set(out)) != len(out):
            raise ValueError("a method is listed twice")
        return out

    @model_validator(mode="after")
    def _public_or_roles(self) -> RouteConfig:
        if self.public and self.roles:
            raise ValueError("a public route needs no token, so it cannot require roles")
        if self.roles == []:
            raise ValueError("`roles: []` would let no one in; leave it out to allow any authenticated caller")
        return self

    @property
    def label(self) -> str:
        methods = ",".join(self.methods) if self.methods else "*"
        return self.name or f"{methods} {self.path}"


class GatewayConfig(Model):
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    tokens: TokensConfig
    identity: IdentityConfig = IdentityConfig()
    auth: AuthConfig = AuthConfig()
    upstreams: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], UpstreamConfig] = Field(min_length=1)
    routes: list[RouteConfig]
    _source: str = ""

    @property
    def source(self) -> str:
        """The file this config was loaded from."""
        return self._source


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, substitute, validate. Raises ConfigError listing every problem."""
    src = read_source(path, environ)
    if src.data is None:
        raise ConfigError(src.problems)
    cfg = None
    try:
        cfg = GatewayConfig.model_validate(src.data, context={"base_dir": Path(path).parent})
        cfg._source = str(path)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            src.problem(_data_path(src.data, err["loc"]), _message(err))
    if cfg is not None:
        _check_cross_references(cfg, src)
    if src.problems:
        raise ConfigError(sorted(src.problems, key=lambda p: (p.line or 0)))
    assert cfg is not None
    return cfg


def _check_cross_references(cfg: GatewayConfig, src: Source) -> None:
    from .rules import RuleConflict, RuleSet   # rules builds on config models, so import late

    for i, route in enumerate(cfg.routes):
        if route.upstream not in cfg.upstreams:
            src.problem(("routes", i, "upstream"), f"unknown upstream {route.upstream!r} "
                                                   f"(known: {', '.join(sorted(cfg.upstreams))})")
    try:
        RuleSet.compile(cfg.routes)
    except RuleConflict as exc:
        other = src.line_of(("routes", exc.first))
        where = f"{src.file}:{other}" if other else f"routes[{exc.first}]"
        src.problem(("routes", exc.second), f"{exc.reason} (the other route is routes[{exc.first}] at {where})")


def _data_path(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the parts of a pydantic error location that are not keys of the data (union tags)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str) and part[:1].islower():
            path.append(part)   # a missing key: name it
            break
        else:
            continue
        path.append(part)
    return tuple(path)


def _message(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "this key is required"
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and where it is placed)"
    if kind == "union_tag_invalid" or kind.startswith("literal_error"):
        return msg
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
