"""Ending a session at fleet speed on a real 3-master Redis Cluster and on a Sentinel setup: the test is
test_session_end_fleet's own, collected here with a store of each topology."""

from __future__ import annotations

import pytest

from tests.integration.admin import test_session_end_fleet as fleet
from tests.integration.admin.test_revocation_topologies import clean_redis

pytestmark = [pytest.mark.integration, pytest.mark.redis_topology]
__all__ = ["clean_redis"]   # the fixture of each topology, by name

test_a_session_ended_on_one_instance_is_refused_by_another_within_a_second = \
    fleet.test_a_session_ended_on_one_instance_is_refused_by_another_within_a_second
