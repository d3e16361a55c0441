"""Long-lived connections never outlive their token: WebSockets and streamed answers end when the
token that opened them expires or is revoked.

The forwarder registers such a connection with ``ConnectionWatcher.watch``; the denylist's mirror
calls ``revoke`` for every revocation it learns of.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import ContextManager

from ..steps.identity import Identity
from ..steps.revocable import RevocableIndex
from ..store.base import Revocation

EndCallback = Callable[[str], None]   # called once with "expired" or "revoked"


@dataclass(eq=False)
class _Watch:
    identity: Identity
    on_end: EndCallback
    timer: asyncio.TimerHandle | None = None
    ended: bool = field(default=False)

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            if self.timer is not None:
                self.timer.cancel()
            self.on_end(reason)


class ConnectionWatcher:
    """The long-lived connections open right now, by token id and by subject."""

    def __init__(self, leeway_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._leeway_s = leeway_s   # a token is accepted until exp + leeway: it lives that long here too
        self._clock = clock
        self._index: RevocableIndex[_Watch] = RevocableIndex()

    def __len__(self) -> int:
        return len(self._index)

    @contextmanager
    def watch(self, identity: Identity, on_end: EndCallback) -> Iterator[None]:
        """While inside, ``on_end`` is called (once) when the token expires or is revoked."""
        watch = _Watch(identity, on_end)
        delay_s = identity.exp + self._leeway_s - self._clock()
        if delay_s <= 0:
            watch.end("expired")
        else:
            watch.timer = asyncio.get_running_loop().call_later(delay_s, watch.end, "expired")
        self._index.add(identity, watch)
        try:
            yield
        finally:
            watch.ended = True
            if watch.timer is not None:
                watch.timer.cancel()
            self._index.discard(identity, watch)

    def revoke(self, revocation: Revocation) -> int:
        """End the connections this revocation kills; returns how many."""
        hit = self._index.touched_by(revocation)
        if revocation.kind == "sub":
            hit = [w for w in hit if w.identity.iat is None or w.identity.iat < revocation.value]
        for watch in hit:
            watch.end("revoked")
        return len(hit)


class Lifetime:
    """One forwarded request's tie to its token (none on public routes)."""

    __slots__ = ("_watcher", "_identity")

    def __init__(self, watcher: ConnectionWatcher, identity: Identity | None) -> None:
        self._watcher, self._identity = watcher, identity

    def on_end(self, callback: EndCallback) -> ContextManager[None]:
        """While inside, ``callback`` runs once when the token expires or is revoked."""
        if self._identity is None:
            return nullcontext()
        return self._watcher.watch(self._identity, callback)

    def cancel_on_end(self) -> ContextManager[None]:
        """While inside, the current task is cancelled when the token expires or is revoked."""
        task = asyncio.current_task()
        assert task is not None
        return self.on_end(lambda reason: task.cancel())
