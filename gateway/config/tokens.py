"""The ``tokens`` section: signing and verification keys, and trusted outside issuers.

Key files are read and checked here, at load time, so a key that does not load is a config error
and never a request-time surprise. Import these names from ``gateway.config.load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from .fields import Duration, Invalid, KeyPath, Model, StrList, raise_found
from .keyfiles import KeyMaterial, load_key_material
from .providers import SecureUrl, secure_url

HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}   # RFC 7518 3.2: at least the hash size
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                    "ES256", "ES384", "ES512", "EdDSA"]
_KEY_SOURCES = ("secret", "private_key_file", "public_key_file")


class KeyConfig(Model):
    kid: str = Field(min_length=1)
    alg: Algorithm
    secret: SecretStr | None = None
    private_key_file: Path | None = None
    public_key_file: Path | None = None
    _material: KeyMaterial | None = None

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> KeyConfig:
        given = [n for n in _KEY_SOURCES if getattr(self, n) is not None]
        if self.alg.startswith("HS"):
            self._material = self._hmac(given)
            return self
        if not given:
            raise Invalid(((), f"an {self.alg} key needs `private_key_file` (to sign) or `public_key_file` "
                                "(to verify only)"))
        if "secret" in given:
            raise Invalid((("secret",), f"an {self.alg} key is read from a PEM file, not from a `secret`"))
        if len(given) > 1:
            raise Invalid((("public_key_file",), "give `private_key_file` or `public_key_file`, not both "
                                                 "(the public key is derived from the private one)"))
        base = (info.context or {}).get("base_dir", Path("."))
        try:
            self._material = load_key_material(self.alg, base / getattr(self, given[0]),
                                               private=given[0] == "private_key_file")
        except ValueError as exc:
            raise Invalid(((given[0],), str(exc))) from None
        return self

    def _hmac(self, given: list[str]) -> KeyMaterial:
        if not given:
            raise Invalid(((), f"an {self.alg} key needs a `secret`, e.g. secret: \"${{TOKENGATE_SECRET}}\""))
        if "secret" not in given:
            raise Invalid(((given[0],), f"an {self.alg} key takes a `secret`, not a key file"))
        if len(given) > 1:
            raise Invalid(((given[1],), f"an {self.alg} key takes only a `secret`, no key file"))
        secret = self.secret.get_secret_value().encode()   # type: ignore[union-attr]
        need = HMAC_MIN_BYTES[self.alg]
        if len(secret) < need:
            raise Invalid((("secret",), f"an {self.alg} secret needs at least {need} bytes (this one has "
                                        f"{len(secret)}); generate one with `tokengate keys generate`"))
        return KeyMaterial(self.alg, secret=secret)

    @property
    def material(self) -> KeyMaterial:
        assert self._material is not None
        return self._material

    @property
    def can_sign(self) -> bool:
        return self.secret is not None or self.private_key_file is not None


class TrustedIssuerConfig(Model):
    """Tokens of an outside issuer, verified with its public keys: from ``jwks_uri``, else from the
    ``jwks_uri`` of its discovery document (``discovery_url``, else ``{issuer}/.well-known/openid-configuration``)."""

    issuer: str = Field(min_length=1)
    jwks_uri: SecureUrl | None = None
    discovery_url: SecureUrl | None = None
    subject_prefix: str | None = Field(None, min_length=1, max_length=64)   # its tokens' sub becomes {prefix}{sub}
    audience: StrList = ()
    roles_claim: str | None = None
    algorithms: tuple[Algorithm, ...] = ("RS256", "PS256", "ES256", "ES384", "EdDSA")

    @field_validator("algorithms")
    @classmethod
    def _no_hmac(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(a.startswith("HS") for a in value):
            raise ValueError("a trusted issuer is verified with public keys: list asymmetric algorithms only")
        return value

    @model_validator(mode="after")
    def _keys_can_be_found(self) -> TrustedIssuerConfig:
        if self.jwks_uri is None and self.discovery_url is None:
            try:
                secure_url(self.issuer)
            except ValueError as exc:
                raise Invalid((("issuer",), f"without jwks_uri or discovery_url the keys are found by discovery "
                                            f"under the issuer, so the issuer is a URL that {exc}")) from None
        return self

    @property
    def metadata_url(self) -> str | None:
        """Where the discovery document is, when the keys are found through it."""
        if self.jwks_uri is not None:
            return None
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def key_problems(keys: list[tuple[Any, bool]], signing_key: Any) -> list[tuple[KeyPath, str]]:
    """Duplicate kids and a bad ``signing_key``, from ``(kid, can_sign)`` per entry of tokens.keys.

    Works on validated models and on raw YAML data alike, so ``load_config`` can still report these
    when another key of the list did not validate.
    """
    found: list[tuple[KeyPath, str]] = []
    first: dict[str, int] = {}
    for i, (kid, _) in enumerate(keys):
        if not isinstance(kid, str):
            continue
        if kid in first:
            found.append((("keys", i, "kid"), f"kid {kid!r} is already used by keys[{first[kid]}]; "
                                              "each kid must be unique"))
        else:
            first[kid] = i
    if isinstance(signing_key, str):
        if signing_key not in first:
            known = ", ".join(sorted(first)) or "none"
            found.append((("signing_key",), f"signing_key {signing_key!r} names no key in tokens.keys "
                                            f"(known kids: {known})"))
        elif not keys[first[signing_key]][1]:
            found.append((("signing_key",), f"key {signing_key!r} has only a public key, so it cannot sign; "
                                            "give it a private_key_file or pick another key"))
    return found


DpopAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class DpopConfig(Model):
    """``tokens.dpop``: DPoP proofs (RFC 9449) at login, refresh and on proxied requests."""

    max_age: Duration = 60.0        # a proof's iat is accepted this far from now, either way
    required: bool = False          # true: an unbound token is refused on every route
    nonce: bool = False             # server nonces (DPoP-Nonce, RFC 9449 8 and 9): proofs must carry a fresh one
    algorithms: tuple[DpopAlgorithm, ...] = ("ES256", "ES384", "EdDSA", "RS256", "PS256")

    @field_validator("max_age")
    @classmethod
    def _sane_age(cls, value: float) -> float:
        if not 1 <= value <= 600:
            raise ValueError("must be between 1s and 10m: a proof is meant to be used at once")
        return value

    @field_validator("algorithms")
    @classmethod
    def _some_algorithm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm (asymmetric only) that DPoP proofs may use")
        return value


class TokensConfig(Model):
    issuer: str = Field(min_length=1)
    audience: StrList
    access_ttl: Duration = 900.0
    refresh_ttl: Duration = 7 * 86400.0
    leeway: Duration = 30.0
    signing_key: str | None = None
    keys: tuple[KeyConfig, ...] = ()
    trusted_issuers: tuple[TrustedIssuerConfig, ...] = ()
    cache_size: int = Field(default=10_000, ge=0, le=10_000_000)   # verified tokens kept per worker; 0: off
    dpop: DpopConfig = DpopConfig()

    @field_validator("audience")
    @classmethod
    def _some_audience(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one audience: the `aud` our tokens carry and accept")
        return value

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
            raise Invalid((("keys",), "configure at least one key (or a trusted issuer): nothing could be "
                                      "verified"))
        found = key_problems([(k.kid, k.can_sign) for k in self.keys], self.signing_key)
        seen = {self.issuer}
        for i, trusted in enumerate(self.trusted_issuers):
            if trusted.issuer in seen:
                found.append((("trusted_issuers", i, "issuer"), f"issuer {trusted.issuer!r} appears twice; "
                                                                "each issuer may appear only once"))
            seen.add(trusted.issuer)
        raise_found(found)
        return self

    @property
    def longest_life_s(self) -> float:
        """How long a token issued now may stay usable (the longer lifetime, plus the leeway): how
        long a revocation whose token's exp is unknown, or a subject's watermark, must last."""
        return max(self.access_ttl, self.refresh_ttl) + self.leeway

    @property
    def signer(self) -> KeyConfig | None:
        """The key new tokens are signed with: ``signing_key``, else the first key able to sign."""
        if self.signing_key is not None:
            return next(k for k in self.keys if k.kid == self.signing_key)
        return next((k for k in self.keys if k.can_sign), None)

    @property
    def assertion_signer(self) -> KeyConfig | None:
        """The key upstream assertions are signed with: upstreams verify them with the public JWKS,
        so it is the signer when that is asymmetric, else the first asymmetric key that can sign."""
        signer = self.signer
        if signer is not None and not signer.alg.startswith("HS"):
            return signer
        return next((k for k in self.keys if k.can_sign and not k.alg.startswith("HS")), None)
