"""Logging: the `log` section's level and format for every logger, and the access log.

JSON lines carry the message and the record's ``extra`` fields; the access log writes one line a
request (``"logger": "tokengate.access"``), in batches, past the ``logging`` machinery. Nothing
here ever writes a token, a cookie, a password or an Authorization value: the access line is built
from chosen fields only, and its path has no query.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp import web

from .config.load import LogConfig

ACCESS_LOGGER = "tokengate.access"
AUDIT_LOGGER = "tokengate.audit"
_json_string = json.encoder.encode_basestring_ascii   # C: a JSON string literal, quotes and escapes included
FLUSH_EVERY_S = 0.05        # access lines wait at most this long before they are written
FLUSH_BYTES = 64 * 1024     # ... or until this much is pending
# What every LogRecord has: anything else on a record came from ``extra`` and goes into the JSON.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message, the extras, and a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _utc(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The text format: the message, then the record's ``extra`` fields as ``key=value`` (the same
    fields the JSON line has, so an audit line reads whole in either format)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = " ".join(f"{key}={value}" for key, value in record.__dict__.items()
                         if key not in _RECORD_FIELDS and not key.startswith("_"))
        if not pairs:
            return text
        head, newline, rest = text.partition("\n")   # a traceback stays below the line
        return f"{head} {pairs}{newline}{rest}"


def _formatter(cfg: LogConfig) -> logging.Formatter:
    return JsonFormatter() if cfg.format == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def configure_logging(cfg: LogConfig) -> None:
    """Send every logger to stderr in the configured format, at the configured level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(cfg))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())


# -- the audit log -----------------------------------------------------------------------------------

# Events (DESIGN "Sessions and sender-constrained tokens"; the README lists them).
LOGIN = "login"
LOGIN_FAILED = "login_failed"
REFRESH = "refresh"
REFRESH_REUSE = "refresh_reuse"
LOGOUT = "logout"
LOGOUT_ALL = "logout_all"
SESSION_END = "session_end"
PASSWORD_CHANGE = "password_change"
PASSWORD_RESET = "password_reset"
OAUTH_LOGIN = "oauth_login"
ADMIN_REVOKE = "admin_revoke"
AUDIT_EVENTS = frozenset({LOGIN, LOGIN_FAILED, REFRESH, REFRESH_REUSE, LOGOUT, LOGOUT_ALL, SESSION_END,
                          PASSWORD_CHANGE, PASSWORD_RESET, OAUTH_LOGIN, ADMIN_REVOKE})
SUCCESS = "success"   # an event's outcome when it went through; otherwise the error code that stopped it
# A field named like one of these would be a secret in the line: refused before anything is written.
_SECRET_WORDS = ("token", "password", "cookie", "proof", "secret", "authorization", "csrf")

_audit_log = logging.getLogger(AUDIT_LOGGER)


def audit(event: str, *, subject: str | None, session: str | None, client: str | None, request_id: str | None,
          outcome: str, **fields: str | int | None) -> None:
    """One INFO line on ``tokengate.audit``: ``event``, ``subject`` (a failed login's: the username
    tried), ``session`` (the family id, None when unknown), ``client`` (its address), ``request_id``,
    ``outcome`` (SUCCESS or an error code), and any plain ``fields`` (a provider's name, a revocation's
    kind). Callers pass identifiers only; a field named like a secret is a bug (ValueError), so that a
    token can't ride along under a harmless-looking call."""
    if event not in AUDIT_EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    for name in fields:
        if any(word in name.lower() for word in _SECRET_WORDS):
            raise ValueError(f"audit field {name!r} would carry a secret")
    _audit_log.info(event, extra={"event": event, "subject": subject, "session": session, "client": client,
                                  "request_id": request_id, "outcome": outcome, **fields})


def operator_audit(cfg: LogConfig, event: str, *, subject: str | None, session: str | None,
                   **fields: str | int | None) -> None:
    """The audit line of a change an operator made with a ``tokengate`` command: on stderr, in the
    configured format and level, with ``via: cli`` and no client or request id. Only this line: the
    command's other loggers and the process's logging set-up stay as they were."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(cfg))
    level, propagate = _audit_log.level, _audit_log.propagate
    _audit_log.addHandler(handler)
    _audit_log.setLevel(cfg.level.upper())
    _audit_log.propagate = False
    try:
        audit(event, subject=subject, session=session, client=None, request_id=None, outcome=SUCCESS, via="cli",
              **fields)
    finally:
        _audit_log.removeHandler(handler)
        _audit_log.setLevel(level)
        _audit_log.propagate = propagate


# Codes the access line (and the metrics' ``reason``) give a forwarded answer that did not end well;
# refusals carry their GatewayError's code instead.
UPSTREAM_TRUNCATED = "upstream_truncated"   # the upstream broke off inside a streamed body: the client's cut
CLIENT_LEFT = "client_gone"                 # the client left while a streamed body was on its way
CLIENT_STALLED = "client_stalled"           # the client took nothing of it for listen.body_timeout: cut


@dataclass(slots=True)
class AccessNote:
    """What the request's handler learnt for its access line and the metrics (None: never got that
    far). ``*_at`` are ``time.perf_counter()`` stamps of the stages' ends (0.0: not reached)."""

    path: str | None = None
    route: str | None = None
    upstream: str | None = None
    subject: str | None = None
    code: str | None = None
    upstream_ms: float | None = None
    routed_at: float = 0.0             # path normalised and route matched
    verified_at: float = 0.0           # a token not in the cache verified; its revocation check begins
    checked_at: float = 0.0            # token extracted, verified and checked against the revocations
    request_id: str | None = None      # for an answer that is no response object (a WebSocket session)
    ws_close: int | None = None        # how a WebSocket session ended: the first close code; 1006: no close frame


ACCESS_NOTE = web.RequestKey("access_note", AccessNote)


class AccessLog:
    """The access lines, built from chosen fields and written to stderr in batches: a line costs a
    few microseconds, where a ``logging`` record would cost more than the rest of the request."""

    def __init__(self, cfg: LogConfig, out: TextIO | None = None) -> None:
        self.enabled = cfg.access and cfg.level in ("debug", "info")
        self._json = cfg.format == "json"
        self._out = out
        self._pending: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second, self._stamp = -1, ""

    def write(self, request: web.BaseRequest, status: int, request_id: str | None, started: float,
              note: AccessNote) -> None:
        now = time.time()
        duration_ms = (time.perf_counter() - started) * 1000
        fields = (("request_id", request_id), ("client", request.remote), ("method", request.method),
                  ("path", note.path if note.path is not None else request.rel_url.path), ("route", note.route),
                  ("status", status), ("code", note.code), ("upstream", note.upstream),
                  ("subject", note.subject), ("duration_ms", duration_ms), ("upstream_ms", note.upstream_ms),
                  ("ws_close", note.ws_close))
        line = self._line(now, fields)
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)

    def flush(self) -> None:
        """Write what is pending (at once: also called when the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            out = self._out or sys.stderr
            out.write("".join(self._pending))
            out.flush()
            self._pending, self._size = [], 0

    def _line(self, now: float, fields: tuple[tuple[str, Any], ...]) -> str:
        """One line; a field whose value is None is left out, floats get 3 decimals. Written by
        hand (JSON-escaped strings, plain numbers): json.dumps would be twice the cost."""
        second = int(now)
        if second != self._second:   # the timestamp's seconds, formatted once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int(now % 1 * 1000):03d}Z"
        if self._json:
            parts = [f'{{"time":"{stamp}","level":"info","logger":"{ACCESS_LOGGER}","message":"request"']
            for key, value in fields:
                if value is None:
                    continue
                if isinstance(value, str):
                    parts.append(f',"{key}":{_json_string(value)}')
                elif isinstance(value, float):
                    parts.append(f',"{key}":{value:.3f}')
                else:
                    parts.append(f',"{key}":{value:d}')
            parts.append("}\n")
            return "".join(parts)
        pairs = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields if v is not None)
        return f"{stamp} INFO {ACCESS_LOGGER} request {pairs}\n"
