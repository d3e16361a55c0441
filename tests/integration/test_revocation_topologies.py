"""Revocation at fleet speed on a real 3-master Redis Cluster and on a Sentinel setup: two `tokengate serve`
processes share the store; a revocation made on one is refused by the other within a second."""

from __future__ import annotations

import jwt
import pytest

from tests.conftest import flush
from tests.integration.test_revocation import PROPAGATION_LIMIT_S, admin_revoke, fleet_config, status_of, until_refused

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]


@pytest.fixture(params=["redis_cluster_url", "redis_sentinel_url"])
async def topology_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(request.param)
    await flush(url)
    return url


async def test_a_revocation_on_one_instance_reaches_another_within_a_second(
        start_gateway, echo_upstream, keys_dir, topology_url, http, mint):
    cfg = fleet_config(keys_dir, echo_upstream, topology_url)
    first, second = await start_gateway(cfg), await start_gateway(cfg)
    token = mint(roles=["user"])
    assert (await status_of(http, second, token))[0] == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (await admin_revoke(http, first, jti=jti)).status == 200
    assert (await status_of(http, first, token))[0] == 401
    assert await until_refused(http, second, token, PROPAGATION_LIMIT_S) < PROPAGATION_LIMIT_S
    assert (await status_of(http, second, mint(roles=["user"])))[0] == 200
