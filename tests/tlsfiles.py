"""A test CA and a server certificate for 127.0.0.1, for the TLS tests (rediss://, https upstreams), and
client certificates for the listener's own TLS (listen.tls with client_ca_file)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokengate test CA")])
    ca = _cert("tokengate test CA", ca_key, ca_name, ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context for a test upstream."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True)
class MtlsFiles:
    """A server certificate for 127.0.0.1 (``ca`` signed it) and client certificates: ``alice`` and
    ``bob`` signed by ``client_ca``, ``stranger`` by a CA the gateway is not told about. Each client
    is (cert.pem, key.pem)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    clients: dict[str, tuple[Path, Path]]

    def client_context(self, name: str | None = None) -> ssl.SSLContext:
        """A client context trusting ``ca``, presenting client ``name``'s certificate (None: none)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if name is not None:
            ctx.load_cert_chain(*self.clients[name])
        return ctx


def _write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return _cert(name, key, subject, key, ca=True), key


def _leaf(d: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _write_pem(d / f"{name}.pem", _cert(name, key, ca.subject, ca_key, ca=False), key)
    return cert, cert.with_suffix(".key")


def write_mtls_files(d: Path) -> MtlsFiles:
    """Write MtlsFiles' certificates and keys into ``d`` (with ca.key, for write_server_cert)."""
    ca, ca_key = _ca("tokengate test CA")
    _write_pem(d / "ca.pem", ca, ca_key)
    server_cert, server_key = _leaf(d, "server", ca, ca_key)
    client_ca, client_ca_key = _ca("tokengate client CA")
    stranger_ca, stranger_ca_key = _ca("somebody else's CA")
    clients = {name: _leaf(d, name, client_ca, client_ca_key) for name in ("alice", "bob")}
    clients["stranger"] = _leaf(d, "stranger", stranger_ca, stranger_ca_key)
    return MtlsFiles(d / "ca.pem", server_cert, server_key, _write_pem(d / "client-ca.pem", client_ca), clients)


def write_server_cert(d: Path, name: str) -> tuple[Path, Path]:
    """Another server certificate for 127.0.0.1 (a new serial) signed by the CA write_mtls_files wrote
    into ``d``: (name.pem, name.key)."""
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return _leaf(d, name, ca, ca_key)
