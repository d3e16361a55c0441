"""The fleet-wide parts of sessions and DPoP on a real 3-master Redis Cluster and on a Sentinel setup:
ending a session on one instance is felt by the other within a second, and a DPoP proof spent on one
instance is refused by the other. The tests are test_session_end_fleet's and test_dpop_replay_fleet's
own, collected here with a store of each topology."""

from __future__ import annotations

import pytest

from tests.integration.admin import test_dpop_replay_fleet as replay, test_session_end_fleet as fleet
from tests.integration.admin.test_revocation_topologies import clean_redis

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]
__all__ = ["clean_redis"]   # the fixture of each topology, by name

test_a_session_ended_on_one_instance_is_refused_by_another_within_a_second = \
    fleet.test_a_session_ended_on_one_instance_is_refused_by_another_within_a_second
test_a_proof_used_on_one_instance_is_refused_by_another = replay.test_a_proof_used_on_one_instance_is_refused_by_another
