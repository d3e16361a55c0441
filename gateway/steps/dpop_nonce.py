"""DPoP server nonces (RFC 9449 8 and 9) that every instance of a fleet accepts without shared state:
a nonce is a time slot's number and an HMAC of it, keyed (HKDF-SHA256) from the signing key's material,
the one secret every instance already shares. A nonce is accepted in its own slot and the next one,
so it is rotated every SLOT_S seconds and lives between SLOT_S and twice that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable

from ..config.tokens import TokensConfig
from .tokens import derived_key

SLOT_S = 30                       # a nonce's time slot: a fresh nonce every 30 s
_INFO = b"tokengate/dpop-nonce/v1"
_MAC_BYTES = 16
_MAX_NONCE_CHARS = 64             # a slot number and a 22-character MAC fit well under this


class NonceMaker:
    """Makes the current nonce and judges a proof's ``nonce`` claim: the current or the previous slot's."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time, slot_s: float = SLOT_S) -> None:
        self._key, self._clock, self._slot_s = key, clock, slot_s

    @classmethod
    def from_config(cls, tokens: TokensConfig, *, clock: Callable[[], float] = time.time) -> NonceMaker:
        """Keyed from the signing key's secret or private key (as oauth/pending.py's Sealer); with no key
        that can sign, a random key: then each instance accepts only its own nonces."""
        key = derived_key(tokens, _INFO)
        return cls(key if key is not None else os.urandom(32), clock=clock)

    def slot(self) -> int:
        return int(self._clock() // self._slot_s)

    def fresh(self) -> str:
        """The nonce of the current slot (what a DPoP-Nonce header carries)."""
        return self._nonce(self.slot())

    def accepts(self, nonce: str) -> bool:
        """True for this maker's nonce of the current or the previous slot; False for anything else."""
        if not isinstance(nonce, str) or len(nonce) > _MAX_NONCE_CHARS:
            return False
        number, dot, _ = nonce.partition(".")
        if not dot or not number.isascii() or not number.isdigit() or len(number) > 20:
            return False
        slot = int(number)
        current = self.slot()
        if slot not in (current, current - 1):
            return False
        return hmac.compare_digest(nonce.encode("ascii", "replace"), self._nonce(slot).encode("ascii"))

    def _nonce(self, slot: int) -> str:
        mac = hmac.new(self._key, str(slot).encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES]
        return f"{slot}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode('ascii')}"
