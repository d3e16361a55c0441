"""RevokedIds, the mirror's compact set: expiry, purge, the merge of recent additions, full reloads,
and a model-based run against a plain dict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.steps.revoked_ids import MAX_UNTIL, RevokedIds, expiries_of, expiry_of

ISS = "https://auth.example.test"
KEY = bytes(range(32))


def test_a_revoked_id_counts_until_its_expiry_rounded_up() -> None:
    ids = RevokedIds()
    ids.add(ISS, "a", 1000.25)
    assert ids.contains(ISS, "a", 999.0)
    assert ids.contains(ISS, "a", 1000.25)      # rounded up: never lapses early
    assert ids.contains(ISS, "a", 1000.9)
    assert not ids.contains(ISS, "a", 1001.0)
    assert not ids.contains(ISS, "b", 0.0)
    assert not ids.contains("https://other.example.test", "a", 0.0)


def test_adding_again_keeps_the_later_expiry_before_and_after_a_merge() -> None:
    ids = RevokedIds(merge_at=4)
    ids.add(ISS, "a", 100)
    ids.add(ISS, "a", 50)                        # in the recent dict
    ids.add(ISS, "a", 200)
    assert len(ids) == 1 and ids.contains(ISS, "a", 150)
    for jti in "bcd":
        ids.add(ISS, jti, 100)                   # the fourth distinct id merges them into the arrays
    assert len(ids._recent) == 0 and len(ids._keys) == 4
    ids.add(ISS, "a", 10)                        # found in the arrays: the later expiry stays
    ids.add(ISS, "b", 300)                       # found in the arrays: extended in place
    assert len(ids) == 4 and len(ids._recent) == 0
    assert ids.contains(ISS, "a", 199) and not ids.contains(ISS, "a", 200)
    assert ids.contains(ISS, "b", 299)


@pytest.mark.parametrize("merge_at", [1, 2, 3, 7])
def test_every_id_is_found_across_merge_boundaries(merge_at: int) -> None:
    ids = RevokedIds(merge_at=merge_at)
    for i in range(50):
        ids.add(ISS, f"t{i}", 1000 + i)
        assert len(ids) == i + 1
        assert all(ids.contains(ISS, f"t{j}", 999) for j in range(i + 1))
    assert len(ids._recent) < merge_at
    assert list(ids._keys) == sorted(ids._keys)


def test_purge_forgets_expired_entries_in_the_arrays_and_the_recent_dict() -> None:
    ids = RevokedIds(merge_at=5)
    for i in range(7):                           # five merged, two recent
        ids.add(ISS, f"t{i}", 100 if i % 2 else 200)
    assert len(ids._recent) == 2
    assert ids.purge(150) == 3
    assert len(ids) == 4
    assert [i for i in range(7) if ids.contains(ISS, f"t{i}", 0)] == [0, 2, 4, 6]
    assert ids.purge(150) == 0
    assert ids.purge(200) == 4 and len(ids) == 0


def test_replace_becomes_exactly_the_entries_with_the_latest_expiry_of_a_repeat() -> None:
    ids = RevokedIds(merge_at=3)
    for i in range(5):
        ids.add(ISS, f"old{i}", 500)
    ids.replace([(ISS, "a", 100), (ISS, "b", 100), (ISS, "a", 300), (ISS, "a", 200)])
    assert len(ids) == 2
    assert not any(ids.contains(ISS, f"old{i}", 0) for i in range(5))
    assert ids.contains(ISS, "a", 299) and not ids.contains(ISS, "a", 300)
    assert ids.contains(ISS, "b", 99)
    ids.replace([])
    assert len(ids) == 0 and not ids.contains(ISS, "a", 0)


def test_load_takes_fingerprints_and_expiries_vectorised() -> None:
    ids = RevokedIds(key=KEY)
    pairs = [(ISS, f"t{i}") for i in range(1000)]
    ids.load(ids.fingerprints(pairs), expiries_of([2000.0] * 1000))
    assert len(ids) == 1000 and all(ids.contains(iss, jti, 1999.5) for iss, jti in pairs)
    with pytest.raises(ValueError):
        ids.load(np.zeros(2, np.uint64), np.zeros(3, np.uint32))


def test_fingerprints_are_keyed_and_keep_issuer_and_id_apart() -> None:
    a, b = RevokedIds(key=KEY), RevokedIds(key=KEY)
    assert a.fingerprint(ISS, "x") == b.fingerprint(ISS, "x")
    assert RevokedIds().fingerprint(ISS, "x") != RevokedIds().fingerprint(ISS, "x")   # random key each
    assert a.fingerprint("ab", "c") != a.fingerprint("a", "bc")
    assert 0 <= a.fingerprint(ISS, "\ud800") < 2**64             # a lone surrogate from JSON still hashes
    assert list(a.fingerprints([(ISS, "x"), ("ab", "c")])) == [a.fingerprint(ISS, "x"), a.fingerprint("ab", "c")]


def test_many_issuers_are_hashed_alike_past_the_issuer_cache() -> None:
    ids = RevokedIds(key=KEY)
    issuers = [f"https://idp{i}.example.test" for i in range(200)]
    for iss in issuers:
        ids.add(iss, "same", 100)
    assert len(ids) == 200 and all(ids.contains(iss, "same", 0) for iss in issuers)
    assert RevokedIds(key=KEY).fingerprint(issuers[-1], "same") == ids.fingerprint(issuers[-1], "same")


@pytest.mark.parametrize(("expires_at", "until"), [
    (0.0, 0), (-5.0, 0), (1.0, 1), (1.5, 2), (1e12, MAX_UNTIL), (math.inf, MAX_UNTIL), (math.nan, MAX_UNTIL),
])
def test_expiries_are_whole_seconds_rounded_up_and_clamped(expires_at: float, until: int) -> None:
    assert expiry_of(expires_at) == until
    assert expiries_of([expires_at]).tolist() == [until]


def test_nbytes_is_about_twelve_bytes_an_entry_once_merged() -> None:
    ids = RevokedIds(merge_at=10**9)
    ids.replace([(ISS, f"t{i}", 100) for i in range(10_000)])
    assert ids._keys.nbytes + ids._until.nbytes == 12 * 10_000
    assert 12 * 10_000 <= ids.nbytes < 12 * 10_000 + 4096


class RevokedIdsAgainstADict(RuleBasedStateMachine):
    """Any sequence of adds, purges and reloads answers like a dict of (iss, jti) -> latest expiry."""

    ids_ = st.sampled_from([f"t{i}" for i in range(12)])
    issuers = st.sampled_from([ISS, "https://idp.example.test"])
    times = st.integers(0, 40).map(lambda t: t / 4)             # quarter seconds: rounding matters

    @initialize(merge_at=st.integers(1, 6))
    def start(self, merge_at: int) -> None:
        self.ids = RevokedIds(merge_at=merge_at)
        self.model: dict[tuple[str, str], float] = {}

    @rule(iss=issuers, jti=ids_, expires_at=times)
    def add(self, iss: str, jti: str, expires_at: float) -> None:
        self.ids.add(iss, jti, expires_at)
        self.model[iss, jti] = max(expires_at, self.model.get((iss, jti), -1.0))

    @rule(now=times)
    def purge(self, now: float) -> None:
        gone = self.ids.purge(now)
        kept = {k: t for k, t in self.model.items() if math.ceil(t) > now}
        assert gone == len(self.model) - len(kept)
        self.model = kept

    @rule(entries=st.lists(st.tuples(issuers, ids_, times), max_size=20))
    def replace(self, entries: list[tuple[str, str, float]]) -> None:
        self.ids.replace(entries)
        self.model = {}
        for iss, jti, expires_at in entries:
            self.model[iss, jti] = max(expires_at, self.model.get((iss, jti), -1.0))

    @invariant()
    def answers_like_the_model(self) -> None:
        assert len(self.ids) == len(self.model)
        for now in (0.0, 2.5, 5.0, 7.75, 10.0):
            for iss in (ISS, "https://idp.example.test"):
                for jti in (f"t{i}" for i in range(12)):
                    expires_at = self.model.get((iss, jti))
                    assert self.ids.contains(iss, jti, now) == (expires_at is not None and math.ceil(expires_at) > now)


TestRevokedIdsAgainstADict = RevokedIdsAgainstADict.TestCase
TestRevokedIdsAgainstADict.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
