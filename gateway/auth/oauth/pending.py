"""A login in progress, between the start and the callback: sealed (AES-256-GCM) into a cookie of its
own, so several logins in different tabs never break each other and the store holds nothing until the
callback. The callback finds the cookie by its ``state`` and can open it only once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...config.load import TokensConfig
from ...steps.tokens import derived_key

PENDING_TTL_S = 600           # DESIGN: the pending-login cookie lives 10 minutes
COOKIE_PREFIX = "tokengate_login_"
STATE_BYTES = 32
_NONCE_BYTES = 12
_SEAL_INFO = b"tokengate/pending-login/v1"
_MAX_COOKIE_CHARS = 3500      # well under the 4 KiB browsers keep of one cookie


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What the callback needs to finish a login. Times are epoch seconds."""

    provider: str
    state: str
    nonce: str
    verifier: str            # the PKCE code_verifier (RFC 7636)
    redirect_uri: str        # sent again with the code, as RFC 6749 4.1.3 requires
    rd: str                  # where the browser goes afterwards (already checked)
    expires_at: float

    @classmethod
    def begin(cls, provider: str, redirect_uri: str, rd: str, now: float) -> PendingLogin:
        return cls(provider, secrets.token_urlsafe(STATE_BYTES), secrets.token_urlsafe(STATE_BYTES),
                   secrets.token_urlsafe(48), redirect_uri, rd, now + PENDING_TTL_S)

    @property
    def challenge(self) -> str:
        """The S256 code_challenge of the verifier."""
        return _b64(hashlib.sha256(self.verifier.encode("ascii")).digest())


def cookie_name(state: str) -> str:
    """The cookie a login with this state lives in: one per login in progress."""
    return COOKIE_PREFIX + _b64(hashlib.sha256(state.encode("utf-8", "surrogatepass")).digest()[:12])


class Sealer:
    """Seals and opens PendingLogins with a key derived from the config, so every instance of a fleet
    can open what another sealed. The cookie's name is bound in as associated data: a sealed login
    cannot be moved under another state's name."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_config(cls, tokens: TokensConfig) -> Sealer:
        """A key derived (HKDF-SHA256) from the signing key's secret or private key: the one secret every
        instance already shares. ValueError when no key can sign (then nobody can log in anyway)."""
        key = derived_key(tokens, _SEAL_INFO)
        if key is None:
            raise ValueError("no signing key")
        return cls(key)

    def seal(self, pending: PendingLogin) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(asdict(pending), separators=(",", ":")).encode()
        return _b64(nonce + self._aead.encrypt(nonce, plain, cookie_name(pending.state).encode()))

    def open(self, state: str, sealed: str, now: float) -> PendingLogin:
        """The login sealed under this state's cookie. ValueError when it was not sealed here, was
        changed, belongs to another state, or has expired."""
        if len(sealed) > _MAX_COOKIE_CHARS:
            raise ValueError("the pending login is too large")
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], cookie_name(state).encode())
            pending = PendingLogin(**json.loads(plain))
        except (ValueError, TypeError, InvalidTag) as exc:
            raise ValueError("the pending login does not open") from exc
        if not hmac.compare_digest(pending.state.encode(), state.encode()):
            raise ValueError("the pending login belongs to another state")
        if pending.expires_at <= now:
            raise ValueError("the pending login has expired")
        return pending


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
