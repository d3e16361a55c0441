"""``listen.tls``: the proxy port's certificate, key and (optionally) the CA its clients' certificates
are verified against. In: PEM file paths relative to the config file. Out: a checked ``TlsConfig``, and
``server_context(tls)``, the ssl.SSLContext the proxy port serves with (built at start and on SIGHUP).

The files are read and checked when the config loads, so a certificate that does not parse or a key
that does not match it is a config error with its file:line, never a port that cannot handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationInfo, field_validator, model_validator

from .fields import Invalid, Model

MAX_PEM_FILE_BYTES = 1 << 20   # a certificate chain is a few kB; this stops /dev/zero from hanging the load


class TlsConfig(Model):
    cert_file: Path                    # PEM: the server certificate, then any intermediates
    key_file: Path                     # PEM: its unencrypted private key
    client_ca_file: Path | None = None  # PEM: clients' certificates are requested (not required) and verified

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _beside_the_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Relative to the config file, like key files; kept resolved so a worker's reload reads the same file.
        base = (info.context or {}).get("base_dir", Path("."))
        return None if value is None else base / value

    @model_validator(mode="after")
    def _files_load(self) -> TlsConfig:
        cert = _certificates(self.cert_file, "cert_file")[0]
        _check_key(self.key_file, cert)
        if self.client_ca_file is not None:
            _certificates(self.client_ca_file, "client_ca_file")
        try:
            server_context(self)   # what OpenSSL itself makes of them: the same call serve makes
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise Invalid(((), f"OpenSSL refuses this certificate and key: {exc}")) from None
        return self


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The proxy port's TLS context: TLS 1.2 or newer, the ssl module's default ciphers; with a client
    CA, a client certificate is requested and, when one is given, verified (DESIGN: not required).
    Reads the files; raises OSError, ssl.SSLError or ValueError when they do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
        # OPTIONAL, not REQUIRED: an unbound token needs no certificate; a presented one that does
        # not verify still fails the handshake (OpenSSL's behaviour for both modes).
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _read(path: Path, key: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_FILE_BYTES + 1)
    except OSError as exc:
        raise Invalid(((key,), f"cannot read {str(path)!r}: {exc.strerror or exc.__class__.__name__}")) from None
    except ValueError:   # e.g. a NUL byte in the path
        raise Invalid(((key,), f"cannot read {str(path)!r}: not a valid file name")) from None
    if len(data) > MAX_PEM_FILE_BYTES:
        raise Invalid(((key,), f"{str(path)!r} is far too big to be a PEM file"))
    return data


def _certificates(path: Path, key: str) -> list[x509.Certificate]:
    data = _read(path, key)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise Invalid(((key,), f"{str(path)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"))
    return found


def _check_key(path: Path, cert: x509.Certificate) -> None:
    data = _read(path, "key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:   # cryptography: "Password was not given but private key is encrypted"
        raise Invalid((("key_file",), f"{str(path)!r} is encrypted; tokengate needs an unencrypted PEM key")) from None
    except ValueError:
        raise Invalid((("key_file",), f"{str(path)!r} holds no PEM private key tokengate can read")) from None
    pem = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*pem) != cert.public_key().public_bytes(*pem):
        raise Invalid((("key_file",), f"{str(path)!r} is not the private key of cert_file's (first) certificate"))
