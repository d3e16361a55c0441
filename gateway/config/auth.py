"""The ``auth`` section: the gateway's own endpoints, where accounts live, cookies, rates, passwords and mail.

Import these names from ``gateway.config.load``.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from .fields import Duration, HttpUrl, Invalid, Model, Rate, StrList, http_url
from .providers import Origin, ProviderConfig, ProviderName, PublicBase
from .smtp_url import parse_smtp_url

MAX_RESET_TTL_S = 86400.0
MAX_PASSWORD_CHARS = 1024   # accounts.MAX_PASSWORD_CHARS: what any password field accepts at all
_ROLE = re.compile(r"[!-+\--~]{1,64}")   # accounts.ROLE (the config sits below the accounts, so not from there)


class UsersFileConfig(Model):
    file: Path


class CredentialsUrlConfig(Model):
    credentials_url: HttpUrl


def _users_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "<credentials_url>" if "credentials_url" in value else "<file>"
    return "<store>"


# Tags are in <> so that they can never be mistaken for a key of the YAML file in error locations.
UsersConfig = Annotated[Union[Annotated[Literal["store"], Tag("<store>")],
                              Annotated[UsersFileConfig, Tag("<file>")],
                              Annotated[CredentialsUrlConfig, Tag("<credentials_url>")]],
                        Discriminator(_users_kind)]


class CookieConfig(Model):
    name: str = Field("refresh_token", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    secure: bool = True
    samesite: Literal["Strict", "Lax", "None"] = "Strict"
    path: str = Field("/auth", pattern=r"^/[^\s;,]*$")

    @field_validator("samesite", mode="before")
    @classmethod
    def _samesite_case(cls, value: Any) -> Any:
        return value.capitalize() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _none_needs_secure(self) -> CookieConfig:
        if self.samesite == "None" and not self.secure:
            raise Invalid((("secure",), "SameSite=None cookies must also be Secure (browsers drop them "
                                        "otherwise)"))
        return self


class RateLimitsConfig(Model):
    login: Rate = (5, 60)            # per address and per username; change-password uses it too
    refresh: Rate = (30, 60)
    forgot_password: Rate = (3, 3600)   # per address and per e-mail address
    signup: Rate = (5, 60)           # per address


class PasswordConfig(Model):
    """What a new password must be (signup, reset, change): NIST SP 800-63B lengths, and never one
    of the shipped common passwords, the username or the e-mail address."""

    min_length: int = Field(8, ge=1, le=MAX_PASSWORD_CHARS)
    max_length: int = Field(128, ge=1, le=MAX_PASSWORD_CHARS)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> PasswordConfig:
        if self.min_length > self.max_length:
            raise Invalid((("min_length",), "min_length must not be above max_length"))
        return self


class MailConfig(Model):
    backend: Literal["smtp", "log"] = "smtp"   # log: write mails to the log, their tokens masked (demo)
    smtp_url: str = "smtp://127.0.0.1:1025"    # smtp://[user:pass@]host[:port][?starttls=true|false], smtps://
    from_: str = Field("no-reply@example.test", alias="from")
    reset_url: str = "http://127.0.0.1:8080/reset?token={token}"
    timeout: Duration = 10.0    # one SMTP delivery attempt, connect to QUIT
    attempts: int = Field(3, ge=1, le=10)   # deliveries tried per mail, with backoff, before it is dropped

    @model_validator(mode="before")
    @classmethod
    def _from_as_written(cls, data: Any, info: ValidationInfo) -> Any:
        # `from_` is the Python name; a config file says `from` (the file is validated with a context).
        if info.context is not None and isinstance(data, dict) and "from_" in data:
            raise Invalid((("from_",), "unknown key; did you mean `from`?"))
        return data

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str) -> str:
        parse_smtp_url(value)
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not 0 < value <= 300:
            raise ValueError("timeout must be above 0 and at most 5m")
        return value

    @field_validator("from_")
    @classmethod
    def _address(cls, value: str) -> str:
        if "@" not in parseaddr(value)[1]:
            raise ValueError("`from` must be an e-mail address, like no-reply@example.com")
        return value

    @field_validator("reset_url")
    @classmethod
    def _has_token(cls, value: str) -> str:
        http_url(value)
        if "{token}" not in value:
            raise ValueError("reset_url must contain {token}, where the reset token goes")
        return value


class AuthConfig(Model):
    prefix: str = "/auth"
    users: UsersConfig = "store"
    signup: bool = True
    refresh_cookie: CookieConfig = CookieConfig()
    access_cookie: bool = False
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    mail: MailConfig = MailConfig()
    refresh_token_in_body: bool = True   # false: the refresh token travels only in its HttpOnly cookie
    refresh_grace: Duration = 0.0   # a just-rotated refresh token may replay the same new pair this long
    default_roles: StrList = ("user",)   # what signup gives a new account
    password: PasswordConfig = PasswordConfig()
    reset_ttl: Duration = 900.0     # how long a password reset link works (once)
    providers: dict[ProviderName, ProviderConfig] = {}   # delegated login: each key is the provider's name in URLs
    redirect_allowlist: tuple[Origin, ...] = ()   # origins `rd` may send the browser to after a login
    public_url: PublicBase | None = None   # how browsers reach the gateway (redirect_uri); else from the request
    post_logout_url: HttpUrl | None = None   # where a provider sends the browser after logout; else the sign-in page
    sign_in_page: bool = True       # GET {prefix}/login serves the HTML sign-in page

    @field_validator("default_roles")
    @classmethod
    def _role_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(_ROLE.fullmatch(role) for role in value):
            raise ValueError("a role is 1-64 printable ASCII characters, without spaces or commas")
        return tuple(dict.fromkeys(value))

    @field_validator("reset_ttl")
    @classmethod
    def _short_reset(cls, value: float) -> float:
        if not 1 <= value <= MAX_RESET_TTL_S:
            raise ValueError("reset_ttl must be between 1s and 1d (OWASP: a reset link should be short-lived)")
        return value

    @field_validator("refresh_grace")
    @classmethod
    def _short_grace(cls, value: float) -> float:
        if value > MAX_REFRESH_GRACE_S:
            raise ValueError("refresh_grace above 60s would let a stolen refresh token be replayed for long; "
                             "use at most 60s")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        segments = value.split("/")
        if segments[0] or len(segments) < 2 or not all(segments[1:]) or any(
                s in (".", "..") or not set(s) <= _UNRESERVED for s in segments[1:]):
            raise ValueError("prefix is a path like /auth: starts with /, no trailing /, letters, digits "
                             "and -._~ only")
        return value

    @model_validator(mode="after")
    def _cookie_reaches_endpoints(self) -> AuthConfig:
        path = self.refresh_cookie.path.rstrip("/")
        if path and self.prefix != path and not self.prefix.startswith(path + "/"):
            raise Invalid((("refresh_cookie", "path"), f"the refresh cookie path must cover {self.prefix} "
                                                       "or browsers will not send it to /refresh"))
        return self


MAX_REFRESH_GRACE_S = 60.0
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
