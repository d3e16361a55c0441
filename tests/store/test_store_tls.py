"""rediss://: the Redis store over TLS, against a real redis-server with a test CA."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import StoreConfig
from gateway.store import StoreUnavailable, open_store
from gateway.store.base import Revocation
from tests.redisproc import free_port

pytestmark = pytest.mark.integration
ISS = "https://auth.example.test"


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


@pytest.fixture
def tls_redis(spawn_redis, tmp_path: Path) -> tuple[int, Path]:
    ca, cert, key = write_tls_files(tmp_path)
    tls_port = free_port()
    spawn_redis("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    return tls_port, ca


async def test_rediss_store_works_over_tls(tls_redis):
    port, ca = tls_redis
    store = await open_store(StoreConfig(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"))
    try:
        await store.ping()
        now = time.time()
        await store.revoke(Revocation("jti", ISS, "j-tls", now + 60, now + 60))
        assert [r.id for r in await store.live_revocations(now)] == ["j-tls"]
    finally:
        await store.close()


async def test_rediss_refuses_a_server_it_cannot_verify(tls_redis):
    port, _ = tls_redis   # no CA given: the test CA is not trusted, so the handshake must fail
    store = await open_store(StoreConfig(url=f"rediss://127.0.0.1:{port}/0"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
