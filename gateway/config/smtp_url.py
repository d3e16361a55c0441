"""The ``auth.mail.smtp_url`` -> ``SmtpTarget`` (host, port, TLS, credentials): checked when the config
loads (config/auth.py) and read again by the mailer (auth/accounts/mail.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from .fields import split_url

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
STARTTLS_PORT = 587
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver: from ``auth.mail.smtp_url``."""

    host: str
    port: int
    implicit_tls: bool = False           # smtps://: TLS from the first byte
    starttls: bool | None = None         # True: required; False: never; None: when the server offers it
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port, for messages (never the credentials)."""
        return f"{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://[user:pass@]host[:port][?starttls=true|false]`` or ``smtps://[user:pass@]host[:port]``.
    Raises ValueError (its message never holds the password)."""
    parts = split_url(url, ("smtp", "smtps"), "smtp://[user:pass@]host[:port] or smtps://host[:port]")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("an smtp url has no path: smtp://host:port")
    starttls: bool | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "starttls" or value.lower() not in _TRUE + _FALSE:
            raise ValueError("the only parameter of an smtp url is starttls=true or starttls=false")
        starttls = value.lower() in _TRUE
    implicit_tls = parts.scheme == "smtps"
    if implicit_tls and starttls:
        raise ValueError("smtps:// is TLS from the start; starttls=true belongs to smtp:// urls")
    username, password = unquote(parts.username or ""), unquote(parts.password or "")
    if bool(username) != bool(password):
        raise ValueError("an smtp url with credentials names both: smtp://user:password@host:port")
    port = parts.port or (STARTTLS_PORT if starttls else DEFAULT_PORTS[parts.scheme])
    return SmtpTarget(parts.hostname or "", port, implicit_tls, False if implicit_tls else starttls,
                      username or None, password or None)
