"""The pending login's sealed cookie (auth/oauth/pending.py): opens only as sealed, for its own state, in time."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from gateway.auth.oauth.pending import COOKIE_PREFIX, PENDING_TTL_S, PendingLogin, Sealer, cookie_name
from gateway.config.load import GatewayConfig

NOW = 1_800_000_000.0


@pytest.fixture
def sealer(make_config: Callable[..., GatewayConfig]) -> Sealer:
    return Sealer.from_config(make_config().tokens)


def pending(**fields: object) -> PendingLogin:
    login = PendingLogin.begin("corp", "https://gw.example.test/auth/oauth/corp/callback", "/after", NOW)
    return PendingLogin(**{**{f: getattr(login, f) for f in login.__slots__}, **fields})   # type: ignore[arg-type]


def test_a_sealed_login_opens_as_it_was(sealer: Sealer) -> None:
    login = pending()
    assert sealer.open(login.state, sealer.seal(login), NOW + 1) == login
    assert login.expires_at == NOW + PENDING_TTL_S


def test_each_login_has_its_own_random_state_nonce_verifier_and_cookie() -> None:
    a, b = pending(), PendingLogin.begin("corp", "https://x.test/cb", "/", NOW)
    assert len({a.state, b.state, a.nonce, b.nonce}) == 4 and a.verifier != b.verifier
    assert cookie_name(a.state) != cookie_name(b.state) and cookie_name(a.state).startswith(COOKIE_PREFIX)
    assert len(a.verifier) >= 43   # RFC 7636 4.1: 43-128 characters


def test_the_challenge_is_s256_of_the_verifier() -> None:
    import hashlib
    login = pending(verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")   # RFC 7636 appendix B
    assert login.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert hashlib.sha256(login.verifier.encode()).digest() == base64.urlsafe_b64decode(login.challenge + "=")


def test_it_never_opens_for_another_state_changed_expired_or_from_another_key(
        sealer: Sealer, make_config: Callable[..., GatewayConfig]) -> None:
    login, other = pending(), pending(state="another-state-of-43-characters-xxxxxxxxxxx")
    sealed = sealer.seal(login)
    with pytest.raises(ValueError):
        sealer.open(other.state, sealed, NOW)   # moved under another state's cookie
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    with pytest.raises(ValueError):
        sealer.open(login.state, flipped, NOW)
    with pytest.raises(ValueError):
        sealer.open(login.state, sealed, login.expires_at)
    for junk in ("", "x", "!!!", "A" * 5000):
        with pytest.raises(ValueError):
            sealer.open(login.state, junk, NOW)
    rotated = make_config(tokens={"keys": [{"kid": "k2", "alg": "HS256", "secret": "z" * 40}], "signing_key": "k2"})
    with pytest.raises(ValueError):
        Sealer.from_config(rotated.tokens).open(login.state, sealed, NOW)


def test_an_asymmetric_signing_key_seals_too(make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(tokens={"signing_key": "rsa1"})
    sealer = Sealer.from_config(cfg.tokens)
    login = pending()
    assert sealer.open(login.state, sealer.seal(login), NOW) == login
