"""Read PEM key files for the config and check that each key fits its algorithm.

A key that is the wrong type or size for its ``alg`` is refused here, at load time: a key is
only ever used with the one algorithm it was configured for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
MIN_RSA_BITS = 2048
MAX_KEY_FILE_BYTES = 1 << 20   # a PEM key is a few kB; this stops a path like /dev/zero from hanging the load


@dataclass(frozen=True)
class KeyMaterial:
    """The loaded key: an HMAC secret, or an asymmetric private key and/or its public key."""

    alg: str
    secret: bytes | None = None
    private: Any = None
    public: Any = None

    def __repr__(self) -> str:   # never show key material in a traceback or log
        kind = "secret" if self.secret else ("private" if self.private else "public")
        return f"KeyMaterial({self.alg}, {kind})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as DER: a reload's reader process hands the validated config to the workers over
        a pipe (server/reload.py), and cryptography's key objects do not pickle."""
        private = None if self.private is None else self.private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        public = None if self.public is None else self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return _from_der, (self.alg, self.secret, private, public)


def _from_der(alg: str, secret: bytes | None, private: bytes | None, public: bytes | None) -> KeyMaterial:
    # The RSA checks ran when the file was read (and cost ~20 ms for a 4096-bit key): not again here.
    return KeyMaterial(alg, secret,
                       None if private is None else serialization.load_der_private_key(
                           private, password=None, unsafe_skip_rsa_key_validation=True),
                       None if public is None else serialization.load_der_public_key(public))


def load_key_material(alg: str, path: Path, *, private: bool) -> KeyMaterial:
    """Load a PEM file for ``alg``. Raises ValueError with a message for the config's author.

    A public key file may also be an X.509 certificate (PEM): its public key is used.
    """
    data = _read(path)
    what = "private" if private else "public"
    if b"-----BEGIN" not in data:
        raise ValueError(f"key file {str(path)!r} is not a PEM file (it should start with -----BEGIN ...)")
    if private and b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ValueError(f"key file {str(path)!r} holds a public key; give it as `public_key_file` "
                         "(verify only), or give the private key here")
    try:
        if private:
            key = serialization.load_pem_private_key(data, password=None)
        elif b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except TypeError:   # cryptography: "Password was not given but private key is encrypted"
        raise ValueError(f"key file {str(path)!r} is encrypted; tokengate needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        misplaced = not private and b"PRIVATE KEY-----" in data
        hint = " (it holds a private key: use `private_key_file`)" if misplaced else ""
        raise ValueError(f"key file {str(path)!r} does not hold a {what} key tokengate can read{hint}") from None
    public = key.public_key() if private else key
    check_key_fits(alg, public)
    return KeyMaterial(alg, private=key if private else None, public=public)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read key file {str(path)!r}: {exc.strerror or exc.__class__.__name__}") from None
    except ValueError:   # e.g. a NUL byte in the path
        raise ValueError(f"cannot read key file {str(path)!r}: not a valid file name") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"key file {str(path)!r} is far too big to be a PEM key")
    return data


def check_key_fits(alg: str, public: Any) -> None:
    """Refuse a key whose type or size does not match ``alg``."""
    if alg[:2] in ("RS", "PS"):
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError(f"{alg} needs an RSA key, got {_kind(public)}")
        if public.key_size < MIN_RSA_BITS:
            raise ValueError(f"{alg} needs an RSA key of at least {MIN_RSA_BITS} bits, got {public.key_size}")
    elif alg in _CURVES:
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, _CURVES[alg]):
            raise ValueError(f"{alg} needs an EC key on curve {_CURVES[alg].name}, got {_kind(public)}")
    elif alg == "EdDSA":
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise ValueError(f"EdDSA needs an Ed25519 key, got {_kind(public)}")
    else:
        raise ValueError(f"{alg} does not take a key file")


def _kind(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    return f"a {type(key).__name__.removeprefix('_').replace('PublicKey', '')} key"
