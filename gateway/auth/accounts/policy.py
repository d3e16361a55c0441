"""Which new passwords are accepted (signup, reset, change): a password in, WeakPassword (with the
reason) out. NIST SP 800-63B 3.1.1.2: length bounds, no commonly used password, nothing taken from
the account itself; no composition rules.

The common list (gateway/data/common-passwords.txt) is the 10,000 most frequent passwords of the
zxcvbn project's frequency list (MIT licence), lowercased, one a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...config.auth import PasswordConfig

COMMON_PASSWORDS_FILE = "data/common-passwords.txt"


class WeakPassword(ValueError):
    """The password breaks the policy; the message says how, without repeating the password."""


def load_common_passwords() -> frozenset[str]:
    """The shipped list, lowercased. Reads a package file: call it off the event loop."""
    text = resources.files("gateway").joinpath(COMMON_PASSWORDS_FILE).read_text("utf-8")
    return frozenset(word for line in text.splitlines() if (word := line.strip().lower()))


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 8
    max_length: int = 128
    common: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: PasswordConfig) -> PasswordPolicy:
        """The policy of ``auth.password`` with the shipped common list (reads a file)."""
        return cls(cfg.min_length, cfg.max_length, load_common_passwords())

    def check(self, password: str, *, username: str | None = None, email: str | None = None) -> str:
        """``password`` when acceptable for the account ``username``/``email``, else WeakPassword.
        Lengths count characters (code points); the comparisons ignore case."""
        if len(password) < self.min_length:
            raise WeakPassword(f"the password must have at least {self.min_length} characters")
        if len(password) > self.max_length:
            raise WeakPassword(f"the password may have at most {self.max_length} characters")
        folded = password.casefold()
        if folded in self.common:
            raise WeakPassword("this password is among the most common ones; choose another")
        if folded in _own_words(username, email):
            raise WeakPassword("the password must not be the username or the e-mail address")
        return password


def _own_words(username: str | None, email: str | None) -> set[str]:
    words = {username or "", email or "", (email or "").rpartition("@")[0]}
    return {word.casefold() for word in words if word}
