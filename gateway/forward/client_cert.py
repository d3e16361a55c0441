"""The client certificate a request came with, for certificate-bound tokens (steps/binding.py).

In: the request and ``listen``. Out: the certificate's DER bytes, or None. From a peer in
``listen.trusted_proxies`` when ``listen.client_cert_header`` is set: that header (URL-encoded PEM,
as nginx's ``$ssl_client_escaped_cert``), and only it; from anyone else: the TLS connection's own.
"""

from __future__ import annotations

import ssl
from urllib.parse import unquote

from aiohttp import web

from ..config.load import ListenConfig
from ..errors import ConflictingHeaders
from .headers import is_trusted


def client_certificate(request: web.BaseRequest, listen: ListenConfig) -> bytes | None:
    """The DER certificate the client presented (verified by the TLS handshake against
    ``listen.tls.client_ca_file``, or by the trusted proxy); None when there is none. Raises
    ConflictingHeaders (400) for a trusted proxy's request with two copies of the header."""
    header = listen.client_cert_header
    if header is not None and is_trusted(request.remote, listen.trusted_proxies):
        # The proxy terminated the client's TLS: the connection's own certificate, if any, is the
        # proxy's, never the client's. No header means the client presented none.
        return certificate_from_header(request.headers.getall(header, []))
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def certificate_from_header(values: list[str]) -> bytes | None:
    """The DER bytes of a URL-encoded PEM certificate; None for no value or one that is not a PEM
    certificate (which then binds nothing)."""
    if not values:
        return None
    if len(values) > 1:
        raise ConflictingHeaders()
    pem = unquote(values[0]).strip()
    if pem.count("-----BEGIN") != 1:   # a chain, or no PEM at all: the client's own certificate alone is meant
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:   # no PEM markers, or bad base64 (binascii.Error is a ValueError)
        return None
