"""``tokengate keys generate``: write a new signing key and say how to configure it."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..config.load import HMAC_MIN_BYTES

GENERATABLE = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
               "HS256", "HS384", "HS512")
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class KeyExists(Exception):
    """Refusing to overwrite a key file: an old key may still be needed to verify tokens."""


def generate_key(alg: str, out_dir: Path, kid: str) -> tuple[list[Path], str]:
    """Create the key files; returns them and the `tokens.keys` entry to paste into the config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if alg.startswith("HS"):
        path = out_dir / f"{kid}.secret"
        secret = base64.urlsafe_b64encode(secrets.token_bytes(HMAC_MIN_BYTES[alg])).decode().rstrip("=")
        _write_private(path, secret.encode() + b"\n")
        var = "TOKENGATE_SECRET"
        snippet = (f'- {{kid: {kid}, alg: {alg}, secret: "${{{var}}}"}}\n'
                   f"# and in the gateway's environment: {var}=\"$(cat {path})\"")
        return [path], snippet
    private = _new_private_key(alg)
    key_path, pub_path = out_dir / f"{kid}.pem", out_dir / f"{kid}.pub.pem"
    if pub_path.exists():
        raise KeyExists(f"{pub_path} already exists; choose another --kid or --out")
    _write_private(key_path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    snippet = (f"- {{kid: {kid}, alg: {alg}, private_key_file: {key_path}}}\n"
               f"# verify-only elsewhere: - {{kid: {kid}, alg: {alg}, public_key_file: {pub_path}}}")
    return [key_path, pub_path], snippet


def default_kid(alg: str) -> str:
    return f"{alg.lower()}-{secrets.token_hex(3)}"


def _new_private_key(alg: str):  # type: ignore[no-untyped-def]
    if alg[:2] in ("RS", "PS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg]())
    return ed25519.Ed25519PrivateKey.generate()


def _write_private(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # never overwrite, never world-readable
    except FileExistsError:
        raise KeyExists(f"{path} already exists; choose another --kid or --out") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
