"""DPoP server nonces (steps/dpop_nonce.py): accepted in their slot and the next, by any maker with the
same key (a fleet), never forged, never from another key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.config.load import GatewayConfig
from gateway.steps.dpop_nonce import SLOT_S, NonceMaker

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_nonce_is_accepted_in_its_slot_and_the_next_only():
    clock = Clock()
    maker = NonceMaker(KEY, clock=clock)
    nonce = maker.fresh()
    assert maker.accepts(nonce)
    clock.now += SLOT_S
    assert maker.accepts(nonce) and maker.fresh() != nonce
    clock.now += SLOT_S
    assert not maker.accepts(nonce)


def test_a_nonce_from_the_future_is_refused():
    clock = Clock()
    maker = NonceMaker(KEY, clock=clock)
    clock.now += SLOT_S
    later = maker.fresh()
    clock.now -= SLOT_S
    assert not maker.accepts(later)


def test_another_instance_with_the_same_key_accepts_it_and_another_key_does_not():
    clock = Clock()
    nonce = NonceMaker(KEY, clock=clock).fresh()
    assert NonceMaker(KEY, clock=clock).accepts(nonce)
    assert not NonceMaker(b"x" * 32, clock=clock).accepts(nonce)


@pytest.mark.parametrize("change", [
    lambda n: n + "A", lambda n: n[:-1] + ("A" if n[-1] != "A" else "B"), lambda n: n.partition(".")[2],
    lambda n: "0." + n.partition(".")[2], lambda n: "", lambda n: "x" * 1000, lambda n: n.replace(".", ""),
    lambda n: "\u0661" + n, lambda n: "-" + n,
])
def test_forged_nonces_are_refused(change: Callable[[str], str]):
    maker = NonceMaker(KEY, clock=Clock())
    assert not maker.accepts(change(maker.fresh()))


@pytest.mark.parametrize("value", [None, 7, b"bytes"])
def test_a_nonce_that_is_not_a_string_is_refused(value: Any):
    assert not NonceMaker(KEY, clock=Clock()).accepts(value)


def test_makers_from_the_same_config_agree_and_use_nothing_but_header_characters(
        make_config: Callable[..., GatewayConfig]):
    cfg = make_config(tokens={"dpop": {"nonce": True}})
    clock = Clock()
    nonce = NonceMaker.from_config(cfg.tokens, clock=clock).fresh()
    assert NonceMaker.from_config(cfg.tokens, clock=clock).accepts(nonce)
    assert all(c.isalnum() or c in "-_." for c in nonce) and nonce.isascii()
