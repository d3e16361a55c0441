"""The proxy port's TLS (``listen.tls``): the context it listens with, and its certificate and key
read again on SIGHUP. In: a TlsConfig. Out: the ssl.SSLContext the listener is made with.

A listener keeps the context it was made with, so a reload cannot replace it: the listening
context's SNI callback, which OpenSSL calls on every ClientHello (with or without a server name),
hands each new handshake the newest context. Connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from ..config.load import TlsConfig
from ..config.tls import server_context

log = logging.getLogger("tokengate")


class ListenerTls:
    """The listening context (``listening``) and the one new handshakes get (``current``)."""

    def __init__(self, tls: TlsConfig, context: ssl.SSLContext) -> None:
        self.tls = tls
        self.listening = self.current = context
        context.sni_callback = self._pick

    @classmethod
    async def open(cls, tls: TlsConfig) -> ListenerTls:
        """Built off the loop: it reads the files. Raises OSError, ssl.SSLError or ValueError."""
        return cls(tls, await asyncio.to_thread(server_context, tls))

    def _pick(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            ssl_object.context = current   # SSL_set_SSL_CTX: this handshake's certificate and key

    async def reload(self) -> bool:
        """SIGHUP: read the certificate and key (and client CA) again; True when new handshakes use
        them. A file that does not load keeps the old context, and says why in the log."""
        try:
            context = await asyncio.to_thread(server_context, self.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS reload: %s and %s were not reloaded, the old certificate keeps serving: %s",
                      self.tls.cert_file, self.tls.key_file, exc)
            return False
        self.current = context
        log.info("TLS reload: new connections use the certificate and key of %s and %s",
                 self.tls.cert_file, self.tls.key_file)
        return True
