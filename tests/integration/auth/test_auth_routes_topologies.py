"""The token lifecycle's store-backed tests again, on a real 3-master Redis Cluster and on Sentinel:
login, logout and logout-all (sessions, the denylist), and every refresh test (rotation and reuse
detection in Lua, 20 concurrent refreshes, the grace window). Collected from their own modules with
this module's `backend`, so the tests are the same code on every topology."""

from __future__ import annotations

import pytest

from tests.conftest import flush
from tests.integration.auth import test_auth_routes as shared, test_auth_routes_refresh as refresh
from tests.store.conftest import REDIS_URLS, TOPOLOGY

auth, make_auth = shared.auth, shared.make_auth   # the shared fixtures, by name


@pytest.fixture(params=[pytest.param("redis-cluster", marks=TOPOLOGY), pytest.param("redis-sentinel", marks=TOPOLOGY)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(REDIS_URLS[backend])
    await flush(url)
    return url


LIFECYCLE = ("test_login_answers_a_bearer_pair_that_is_never_cached", "test_login_token_passes_the_proxy",
             "test_store_keeps_only_the_refresh_tokens_hash", "test_logout_denies_the_access_token_and_ends_its_session",
             "test_logout_ends_only_its_own_session", "test_a_second_logout_with_the_same_token_is_refused",
             "test_logout_all_ends_every_session_of_the_subject", "test_login_right_after_logout_all_gives_a_working_token")
globals().update({name: getattr(shared, name) for name in LIFECYCLE})
globals().update({name: test for name, test in vars(refresh).items() if name.startswith("test_")})
