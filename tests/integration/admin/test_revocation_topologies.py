"""Revocation at fleet speed on a real 3-master Redis Cluster and on a Sentinel setup: two `tokengate serve`
processes share the store; a revocation made on one is refused by the other. The test
is test_revocation's own, collected here with a store of each topology."""

from __future__ import annotations

import pytest

from tests.conftest import flush
from tests.integration.admin import test_revocation as revocation

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]


@pytest.fixture(params=["redis_cluster_url", "redis_sentinel_url"])
async def clean_redis(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(request.param)
    await flush(url)
    return url


test_a_revocation_on_one_instance_reaches_another = revocation.test_a_revocation_on_one_instance_reaches_another
