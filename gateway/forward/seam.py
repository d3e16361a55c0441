"""The seam between the forwarder and its two upstream clients (lean.py, general.py): both take a
request as an ``Outgoing`` and hand back an ``UpstreamAnswer``, their own library's errors turned
into the gateway's at their boundary; relay.py times the exchange and sends the answer on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import NamedTuple, Protocol

from ..errors import GatewayError
from .request_body import Body


class Outgoing(NamedTuple):
    """One request as both clients take it."""

    method: str
    target: str                         # the request line's target: base path + path + query, as sent
    host: str                           # the Host header
    headers: list[tuple[str, str]]      # the rest, as headers.request_header_items decided them
    body: Body


class UpstreamAnswer(Protocol):
    """An upstream's answer as either client hands it over, its head checked (answer_head.py)."""

    status: int
    reason: str | None
    content_length: int | None
    broken: tuple[type[BaseException], ...]   # what its chunks raise when the upstream breaks inside the body

    @property
    def header_items(self) -> Iterable[tuple[str, str]]: ...

    def read(self) -> Awaitable[bytes]:
        """The whole body; raises one of ``broken`` when the upstream breaks (see ``failure``)."""

    def failure(self, exc: BaseException) -> GatewayError:
        """What the client is answered for ``exc`` (one of ``broken``) before anything was sent to it:
        UpstreamFailed or UpstreamTimeout, RequestTimeout when the client's own body stalled."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    def finish(self, complete: bool) -> None:
        """Give the connection back (``complete``: the body was read whole) or close it."""
