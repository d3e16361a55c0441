"""Trusted issuers: a real aiohttp server serves the JWKS; the Verifier fetches, caches and refetches it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from blockbuster import blockbuster_ctx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from gateway.denylist import Denylist
from gateway.errors import DependencyDown, InvalidToken
from gateway.keys import MAX_AGE_S, REFETCH_INTERVAL_S, JwksCache
from gateway.store import MemoryStore
from gateway.tokencache import Authenticator, TokenCache
from gateway.verify import Verifier
from tests.conftest import HS_SECRET

pytestmark = pytest.mark.integration

IDP = "https://idp.example.test"
CLIENT = "my-client"


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    """Blocking I/O from keys.py or verify.py on the event loop fails the test (JWKS fetches stay async).

    Scoped to those modules: the tests themselves load configs from files, which is startup work."""
    with blockbuster_ctx(["gateway.keys", "gateway.verify"]):
        yield


@dataclass
class Idp:
    """The identity provider's side: its keys, what its JWKS endpoint serves, and how often it was asked."""

    keys: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    extra: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    def add_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        to_jwk = get_default_algorithms()["ES256"].to_jwk
        return {"keys": [*self.extra, *({**to_jwk(k.public_key(), as_dict=True), "kid": kid, "alg": "ES256",
                                         "use": "sig"} for kid, k in self.keys.items())]}

    def mint(self, kid: str | None, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": IDP, "aud": CLIENT, "sub": "carol", "iat": now, "exp": now + 300,
                "jti": uuid.uuid4().hex, "groups": ["ops"], **claims}
        headers = {"kid": kid} if kid else {}
        return jwt.encode(body, key if key is not None else self.keys[kid], algorithm="ES256", headers=headers)


class Clock:
    """A monotonic clock the test moves by hand, so the refetch rate limit is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def idp() -> Idp:
    state = Idp()
    state.add_key("idp1")
    return state


@pytest.fixture
async def jwks_server(aiohttp_server: Any, idp: Idp) -> TestServer:
    async def serve(request: web.Request) -> web.Response:
        idp.requests += 1
        if idp.status != 200:
            return web.json_response({"error": "down"}, status=idp.status)
        return web.json_response(idp.jwks())

    app = web.Application()
    app.router.add_get("/jwks", serve)
    return await aiohttp_server(app)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_verifier(make_config: Callable[..., Any], clock: Clock) -> AsyncIterator[Callable[..., Verifier]]:
    """make_verifier(jwks_uri, **issuer fields) -> a Verifier trusting IDP; closed after the test."""
    made: list[Verifier] = []

    def make(jwks_uri: str, **issuer: Any) -> Verifier:
        trusted = {"issuer": IDP, "jwks_uri": jwks_uri, "audience": [CLIENT], "roles_claim": "groups", **issuer}
        config = make_config(tokens={"trusted_issuers": [trusted]})
        made.append(Verifier(config.tokens, config.identity,
                             jwks=JwksCache(config.tokens.trusted_issuers, clock=clock)))
        return made[-1]

    yield make
    for verifier in made:
        await verifier.close()


@pytest.fixture
def verifier(make_verifier: Callable[..., Verifier], jwks_server: TestServer) -> Verifier:
    return make_verifier(str(jwks_server.make_url("/jwks")))


async def test_trusted_issuer_token_is_accepted(verifier: Verifier, idp: Idp) -> None:
    identity = await verifier.verify(idp.mint("idp1"))
    assert (identity.iss, identity.sub, identity.roles) == (IDP, "carol", frozenset({"ops"}))
    await verifier.verify(idp.mint("idp1"))
    assert idp.requests == 1   # cached: one fetch for both tokens


async def test_kidless_token_uses_the_issuers_single_key_of_its_alg(verifier: Verifier, idp: Idp) -> None:
    assert (await verifier.verify(idp.mint(None, key=idp.keys["idp1"]))).sub == "carol"


async def test_unknown_kid_refetches_once_then_refuses(verifier: Verifier, idp: Idp, clock: Clock) -> None:
    await verifier.verify(idp.mint("idp1"))
    clock.advance(REFETCH_INTERVAL_S)
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken):
        await verifier.verify(idp.mint("ghost", key=stranger))
    assert idp.requests == 2
    for _ in range(5):   # within the interval: no more fetches, however many unknown kids arrive
        with pytest.raises(InvalidToken):
            await verifier.verify(idp.mint("ghost", key=stranger))
    assert idp.requests == 2


async def test_concurrent_unknown_kids_share_one_refetch(verifier: Verifier, idp: Idp, clock: Clock) -> None:
    await verifier.verify(idp.mint("idp1"))
    clock.advance(REFETCH_INTERVAL_S)
    stranger = ec.generate_private_key(ec.SECP256R1())
    results = await asyncio.gather(*(verifier.verify(idp.mint(f"ghost{i}", key=stranger)) for i in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, InvalidToken) for r in results)
    assert idp.requests == 2


async def test_rotated_key_is_picked_up_after_refetch(verifier: Verifier, idp: Idp, clock: Clock) -> None:
    await verifier.verify(idp.mint("idp1"))
    idp.add_key("idp2")
    token = idp.mint("idp2")
    with pytest.raises(InvalidToken):   # just fetched: a new kid waits for the refetch interval
        await verifier.verify(token)
    assert idp.requests == 1
    clock.advance(REFETCH_INTERVAL_S)
    assert (await verifier.verify(token)).sub == "carol"
    assert idp.requests == 2


@pytest.mark.parametrize("outage", ["refused", "http_500"])
async def test_issuer_down_at_start_is_dependency_down(make_verifier: Callable[..., Verifier], idp: Idp,
                                                       jwks_server: TestServer, clock: Clock, outage: str) -> None:
    if outage == "refused":
        uri = f"http://127.0.0.1:{unused_port()}/jwks"
    else:
        uri, idp.status = str(jwks_server.make_url("/jwks")), 500
    verifier = make_verifier(uri)
    with pytest.raises(DependencyDown) as info:
        await verifier.verify(idp.mint("idp1"))
    assert info.value.status == 503
    with pytest.raises(DependencyDown):   # failing fast: no new fetch right away
        await verifier.verify(idp.mint("idp1"))
    assert idp.requests == (1 if outage == "http_500" else 0)


async def test_issuer_back_up_is_used_after_the_retry_delay(verifier: Verifier, idp: Idp, clock: Clock) -> None:
    idp.status = 503
    with pytest.raises(DependencyDown):
        await verifier.verify(idp.mint("idp1"))
    idp.status = 200
    clock.advance(10)
    assert (await verifier.verify(idp.mint("idp1"))).sub == "carol"


async def test_stale_keys_keep_serving_while_the_issuer_is_down(verifier: Verifier, idp: Idp, clock: Clock) -> None:
    await verifier.verify(idp.mint("idp1"))
    idp.status = 500
    clock.advance(3600)
    assert (await verifier.verify(idp.mint("idp1"))).sub == "carol"
    assert idp.requests == 2   # it did try to refresh


async def test_hmac_key_in_the_issuers_jwks_is_never_used(verifier: Verifier, idp: Idp) -> None:
    secret = jwt.utils.base64url_encode(HS_SECRET.encode()).decode()
    idp.extra = [{"kty": "oct", "kid": "shared", "alg": "HS256", "k": secret}]
    now = int(time.time())
    token = jwt.encode({"iss": IDP, "aud": CLIENT, "sub": "mallory", "exp": now + 60, "jti": "x"},
                       HS_SECRET, algorithm="HS256", headers={"kid": "shared"})
    with pytest.raises(InvalidToken):
        await verifier.verify(token)
    assert (await verifier.verify(idp.mint("idp1"))).sub == "carol"


async def test_trusted_token_must_name_the_issuers_audience(verifier: Verifier, idp: Idp) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(idp.mint("idp1", aud="api"))


async def test_alg_outside_the_issuers_list_is_refused_without_fetching(
        make_verifier: Callable[..., Verifier], jwks_server: TestServer, idp: Idp) -> None:
    verifier = make_verifier(str(jwks_server.make_url("/jwks")), algorithms=["RS256"])
    with pytest.raises(InvalidToken):
        await verifier.verify(idp.mint("idp1"))
    assert idp.requests == 0


async def test_verifier_without_jwks_cache_makes_its_own(make_config: Callable[..., Any], idp: Idp,
                                                         jwks_server: TestServer) -> None:
    trusted = {"issuer": IDP, "jwks_uri": str(jwks_server.make_url("/jwks")), "audience": [CLIENT]}
    config = make_config(tokens={"trusted_issuers": [trusted]})
    verifier = Verifier(config.tokens, config.identity)
    try:
        assert (await verifier.verify(idp.mint("idp1"))).sub == "carol"
    finally:
        await verifier.close()


async def test_prefetch_warms_the_cache(make_config: Callable[..., Any], idp: Idp, jwks_server: TestServer,
                                        clock: Clock) -> None:
    trusted = {"issuer": IDP, "jwks_uri": str(jwks_server.make_url("/jwks")), "audience": [CLIENT]}
    config = make_config(tokens={"trusted_issuers": [trusted]})
    cache = JwksCache(config.tokens.trusted_issuers, clock=clock)
    try:
        await cache.prefetch()
        assert idp.requests == 1
        assert (await cache.select(IDP, "idp1", "ES256")).kid == "idp1"
        assert idp.requests == 1
    finally:
        await cache.close()


@pytest.fixture
async def authenticator(verifier: Verifier) -> AsyncIterator[Authenticator]:
    store = MemoryStore()
    denylist = Denylist(store)
    await denylist.start()
    deadline = time.monotonic() + 5
    while not denylist.in_sync:   # a cache hit counts only while the mirror is in sync
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    yield Authenticator(verifier, denylist, TokenCache(100, leeway_s=30))
    await denylist.close()
    await store.close()


async def test_a_cached_token_dies_when_its_issuer_drops_its_key(authenticator: Authenticator, idp: Idp,
                                                                 clock: Clock) -> None:
    old = idp.mint("idp1")
    assert (await authenticator.authenticate(old)).identity.sub == "carol"
    idp.add_key("idp2")
    del idp.keys["idp1"]   # the issuer rotates idp1 out
    clock.advance(REFETCH_INTERVAL_S)
    assert (await authenticator.authenticate(idp.mint("idp2"))).identity.sub == "carol"   # refetch
    assert idp.requests == 2
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(old)


async def test_a_cached_token_lives_no_longer_than_its_issuers_keys_are_fresh(authenticator: Authenticator,
                                                                             idp: Idp) -> None:
    entry = await authenticator.authenticate(idp.mint("idp1"))
    assert entry.until <= time.time() + MAX_AGE_S   # the refresh due then may remove the key
