"""The delegated-login part of ``auth``: identity providers (OpenID Connect by discovery, GitHub), where
a browser may be sent after login, and the URL rules every provider or trusted-issuer URL follows.

Import these names from ``gateway.config.load``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from .fields import Invalid, KeyPath, Model, StrList, split_url
from .origins import check_allowlist_origin

PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")   # the provider's key in URLs and subjects
_ROLE = re.compile(r"[!-+\--~]{1,64}")
_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: the hosts where plain http:// is allowed."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_url(value: str) -> str:
    """An https:// URL, or http:// on a loopback host (a provider, its discovery or keys): anything
    else would let the network between the gateway and the provider forge identities."""
    parts = split_url(value, ("http", "https"), "https://host/...")
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ValueError("must be https:// (http:// only on a loopback address such as 127.0.0.1)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if parts.fragment:
        raise ValueError("must not carry a #fragment")
    return value


def _public_base(value: str) -> str:
    secure_url(value)
    parts = urlsplit(value)
    if parts.query or value.endswith("?") or value.endswith("/"):
        raise ValueError("write it without a trailing / or query, like https://gateway.example.com")
    return value


SecureUrl = Annotated[str, AfterValidator(secure_url)]
Origin = Annotated[str, AfterValidator(check_allowlist_origin)]
PublicBase = Annotated[str, AfterValidator(_public_base)]


class RolesMapConfig(Model):
    """Roles of a delegated account that is not linked to a local one: every value of ``claim`` (a string
    or a list of strings) that ``map`` names gives those roles; when none does, ``default``."""

    claim: str | None = Field(None, min_length=1)
    map: dict[str, StrList] = {}
    default: StrList | None = None   # None: auth.default_roles, what a signup gets

    @field_validator("map")
    @classmethod
    def _role_names(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for roles in value.values():
            _check_roles(roles)
        return value

    @field_validator("default")
    @classmethod
    def _default_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _check_roles(value)

    @model_validator(mode="after")
    def _map_needs_claim(self) -> RolesMapConfig:
        if self.map and self.claim is None:
            raise Invalid((("claim",), "a role map needs the claim its keys are values of, like `claim: groups`"))
        return self


def _check_roles(roles: tuple[str, ...]) -> tuple[str, ...]:
    if not all(_ROLE.fullmatch(role) for role in roles):
        raise ValueError("a role is 1-64 printable ASCII characters, without spaces or commas")
    return roles


ClientAuth = Literal["client_secret_basic", "client_secret_post", "none"]


class _ClientConfig(Model):
    client_id: str = Field(min_length=1, max_length=512)
    client_secret: SecretStr | None = None
    client_auth: ClientAuth = "client_secret_basic"
    roles: RolesMapConfig = RolesMapConfig()
    link_by_verified_email: bool = False
    display_name: str | None = Field(None, min_length=1, max_length=64)   # the button: "Sign in with {display_name}"

    @model_validator(mode="after")
    def _secret_fits_client_auth(self) -> _ClientConfig:
        secret = self.client_secret.get_secret_value() if self.client_secret is not None else None
        problem = client_secret_problem(self.client_auth, secret)
        if problem:
            raise Invalid((("client_secret",), problem))
        return self


def client_secret_problem(client_auth: Any, secret: Any) -> str | None:
    """What is wrong with this pair of ``client_auth`` and ``client_secret``, or None."""
    has_secret = secret not in (None, "")
    if client_auth != "none" and not has_secret:
        return (f"client_auth {client_auth} needs a client_secret (or set client_auth: none for a public client "
                "that uses PKCE only)")
    if client_auth == "none" and has_secret:
        return "a public client (client_auth: none) has no client_secret; remove it or choose client_secret_basic"
    return None


class OidcProviderConfig(_ClientConfig):
    """Any OpenID Provider, found by discovery at ``{issuer}/.well-known/openid-configuration``."""

    type: Literal["oidc"] = "oidc"
    issuer: SecureUrl
    scopes: StrList = ("openid", "email", "profile")

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("an OpenID Connect login needs the `openid` scope")
        if any(" " in scope for scope in value):
            raise ValueError("a scope has no spaces; list each scope on its own")
        return value

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class GithubProviderConfig(_ClientConfig):
    """GitHub (OAuth 2.0 without OpenID Connect): fixed endpoints under ``url``, the user from ``api_url``.
    Point both at a GitHub Enterprise Server to use one."""

    type: Literal["github"]
    # GitHub documents client_id and client_secret in the POST body, and requires the secret.
    client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_post"
    scopes: StrList = ("read:user", "user:email")
    url: SecureUrl = "https://github.com"
    api_url: SecureUrl = "https://api.github.com"

    @field_validator("scopes")
    @classmethod
    def _reads_emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Without it GET /user/emails fails, and a login that cannot see the verified primary address
        # is refused (falling back to "no address" could link the login to another account).
        if not {"user", "user:email"} & set(value):
            raise ValueError("GitHub logins read the verified e-mail address: include the scope user:email")
        return value

    @property
    def issuer(self) -> str:
        """What the session records as where the login came from."""
        return self.url.rstrip("/")


def _provider_kind(value: Any) -> str:
    return "<github>" if isinstance(value, dict) and value.get("type") == "github" else "<oidc>"


ProviderConfig = Annotated[Union[Annotated[OidcProviderConfig, Tag("<oidc>")],
                                 Annotated[GithubProviderConfig, Tag("<github>")]],
                           Discriminator(_provider_kind)]


def mapped_role_problems(known: set[str], maps: Iterable[tuple[str, Mapping[str, Any], Sequence[Any]]]
                         ) -> list[tuple[KeyPath, str]]:
    """A provider's role map may give only roles that a route asks for or signup gives: any other name
    is most likely a typo, which would silently grant nothing. ``maps``: (provider, map, default)."""
    found: list[tuple[KeyPath, str]] = []
    for name, mapping, default in maps:
        where = ("auth", "providers", name, "roles")
        given = [((*where, "map", value), roles) for value, roles in mapping.items()] + [((*where, "default"), default)]
        for path, roles in given:
            names = [roles] if isinstance(roles, str) else roles if isinstance(roles, (list, tuple)) else []
            found += [(path, f"role {role!r} is not asked for by any route nor given by auth.default_roles")
                      for role in names if isinstance(role, str) and role not in known]
    return found


def check_provider_name(value: str) -> str:
    if not PROVIDER_NAME.fullmatch(value):
        raise ValueError(f"provider name {value!r}: 1-32 lower-case letters, digits, - and _, starting with a "
                         "letter or digit (it appears in URLs and in the subjects of its users)")
    return value


ProviderName = Annotated[str, AfterValidator(check_provider_name)]
