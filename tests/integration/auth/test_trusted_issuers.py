"""Trusted issuers: real aiohttp servers serve the JWKS; the Verifier fetches, caches and refetches it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from blockbuster import BlockingError, blockbuster_ctx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from gateway.errors import DependencyDown, InvalidToken
from gateway.steps.denylist import Denylist
from gateway.steps.keys import MAX_AGE_S, REFETCH_INTERVAL_S, JwksCache, KeyRing, keyset_from_jwks
from gateway.steps.tokencache import Authenticator, TokenCache
from gateway.steps.verify import Verifier
from gateway.store import MemoryStore
from tests.conftest import HS_SECRET

pytestmark = pytest.mark.integration

IDP = "https://idp.example.test"
IDP_B = "https://idp-b.example.test"
CLIENT = "my-client"

# The blocking-call guard scans the modules that define these objects, taken from the objects (never
# from module names), so a move takes the guard along and a module left behind as a shim is not what it scans.
GUARDED = (Verifier, KeyRing, JwksCache)
# The code that fetches and reads a JWKS on the loop. Each must be defined in a scanned module: a
# rename fails here at import, a move out of those modules fails guarded_modules() (loudly, in every test).
FETCH_PATH = (Verifier.verify, JwksCache.select, JwksCache.prefetch, JwksCache._refresh, JwksCache._fetch,
              keyset_from_jwks)


def guarded_modules() -> list[ModuleType]:
    modules = {sys.modules[obj.__module__] for obj in GUARDED}
    scanned = {module.__file__ for module in modules}
    for func in FETCH_PATH:
        source = inspect.unwrap(func).__code__.co_filename
        assert source in scanned, (f"{func.__qualname__} is defined in {source}, which the blocking-call guard "
                                   f"does not scan ({sorted(scanned)}): add an object of that module to GUARDED")
    return sorted(modules, key=lambda module: module.__name__)


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    """Blocking I/O on the event loop from the verifier's or the key caches' modules fails the test (JWKS
    fetches stay async); test_a_blocking_call_in_the_jwks_fetch_fails_the_test shows it trips.

    Scoped to those modules: the tests themselves load configs from files, which is startup work."""
    with blockbuster_ctx(guarded_modules()):
        yield


@dataclass
class Idp:
    """The identity provider's side: its keys, what its JWKS endpoint serves, and how often it was asked."""

    issuer: str = IDP
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
        body = {"iss": self.issuer, "aud": CLIENT, "sub": "carol", "iat": now, "exp": now + 300,
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


async def serve_jwks(aiohttp_server: Any, idp: Idp) -> TestServer:
    """A real aiohttp server on loopback serving ``idp``'s JWKS at /jwks."""
    async def serve(request: web.Request) -> web.Response:
        idp.requests += 1
        if idp.status != 200:
            return web.json_response({"error": "down"}, status=idp.status)
        return web.json_response(idp.jwks())

    app = web.Application()
    app.router.add_get("/jwks", serve)
    return await aiohttp_server(app)


@pytest.fixture
async def jwks_server(aiohttp_server: Any, idp: Idp) -> TestServer:
    return await serve_jwks(aiohttp_server, idp)


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


@contextlib.asynccontextmanager
async def authenticating(verifier: Verifier) -> AsyncIterator[Authenticator]:
    """An Authenticator (verified-token cache and revocation mirror) around ``verifier``."""
    store = MemoryStore()
    denylist = Denylist(store)
    await denylist.start()
    try:
        deadline = time.monotonic() + 5
        while not denylist.in_sync:   # a cache hit counts only while the mirror is in sync
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        yield Authenticator(verifier, denylist, TokenCache(100, leeway_s=30))
    finally:
        await denylist.close()
        await store.close()


@pytest.fixture
async def authenticator(verifier: Verifier) -> AsyncIterator[Authenticator]:
    async with authenticating(verifier) as authenticator:
        yield authenticator


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


# --- two issuers whose keys share their kids ------------------------------------------------------

@dataclass
class TwoIdps:
    a: Idp
    b: Idp
    verifier: Verifier


@pytest.fixture
async def two_idps(aiohttp_server: Any, make_config: Callable[..., Any], clock: Clock) -> AsyncIterator[TwoIdps]:
    """Two trusted issuers, each with a real JWKS server of its own, each naming its key `k1`. The
    issuers differ in nothing else (same audience, same roles claim): only the key decides."""
    a, b = Idp(), Idp(issuer=IDP_B)
    trusted = []
    for idp in (a, b):
        idp.add_key("k1")
        server = await serve_jwks(aiohttp_server, idp)
        trusted.append({"issuer": idp.issuer, "jwks_uri": str(server.make_url("/jwks")), "audience": [CLIENT],
                        "roles_claim": "groups"})
    config = make_config(tokens={"trusted_issuers": trusted})
    verifier = Verifier(config.tokens, config.identity, jwks=JwksCache(config.tokens.trusted_issuers, clock=clock))
    yield TwoIdps(a, b, verifier)
    await verifier.close()


async def refused_as_invalid(verifier: Verifier, token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    assert info.value.code == "invalid_token"


@pytest.mark.parametrize("first", ["a", "b"])
async def test_overlapping_kids_each_issuer_accepts_only_its_own_key(two_idps: TwoIdps, first: str) -> None:
    """A token claiming one issuer, signed with the other's `k1`, is refused both ways, whichever issuer's
    keys were fetched first; the same tokens signed with the claimed issuer's own `k1` pass."""
    idps = (two_idps.a, two_idps.b) if first == "a" else (two_idps.b, two_idps.a)
    for idp in idps:   # the controls, and each issuer's JWKS fetched, in this order
        identity = await two_idps.verifier.verify(idp.mint("k1"))
        assert (identity.iss, identity.sub) == (idp.issuer, "carol")
    for claimed, signer in (idps, idps[::-1]):
        await refused_as_invalid(two_idps.verifier, claimed.mint("k1", key=signer.keys["k1"]))
    assert (two_idps.a.requests, two_idps.b.requests) == (1, 1)


async def test_a_key_refresh_of_one_issuer_leaves_the_other_alone(two_idps: TwoIdps, clock: Clock) -> None:
    """Issuer A rotates `k1` out: A's keys are refetched and A's cached tokens die; B's keys are not
    refetched, B's cached token stays cached, and B's `k1` never stands in for the `k1` A dropped."""
    a, b, verifier = two_idps.a, two_idps.b, two_idps.verifier
    async with authenticating(verifier) as authenticator:
        a_old, b_token = a.mint("k1"), b.mint("k1")
        await authenticator.authenticate(a_old)
        b_entry = await authenticator.authenticate(b_token)
        a.add_key("k2")
        del a.keys["k1"]
        clock.advance(REFETCH_INTERVAL_S)
        assert (await authenticator.authenticate(a.mint("k2"))).identity.iss == IDP   # unknown kid: A refetched
        assert (a.requests, b.requests) == (2, 1)
        assert await authenticator.authenticate(b_token) is b_entry   # still cached: A's refresh dropped A's only
        assert (await verifier.verify(b.mint("k1"))).iss == IDP_B
        assert b.requests == 1
        with pytest.raises(InvalidToken):   # the cached entry went with A's keys; A has no k1 now
            await authenticator.authenticate(a_old)
        await refused_as_invalid(verifier, a.mint("k1", key=b.keys["k1"]))


# --- the blocking-call guard trips --------------------------------------------------------------

async def test_a_blocking_call_in_the_jwks_fetch_fails_the_test(make_config: Callable[..., Any],
                                                               jwks_server: TestServer, clock: Clock) -> None:
    """A blocking call made inside a JWKS fetch raises BlockingError: the guard is live where it matters.

    The call is made by an aiohttp trace hook, which runs inside the fetcher's request. The fetch is
    started by prefetch, so no frame of the Verifier's module is on the stack: the JWKS fetcher's own
    module must be among the scanned ones (a guard left scanning a shim fails this test)."""
    async def block(*_: Any) -> None:
        time.sleep(0)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(block)
    trusted = {"issuer": IDP, "jwks_uri": str(jwks_server.make_url("/jwks")), "audience": [CLIENT]}
    config = make_config(tokens={"trusted_issuers": [trusted]})
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        cache = JwksCache(config.tokens.trusted_issuers, session, clock=clock)
        with pytest.raises(BlockingError):
            await cache.prefetch()
