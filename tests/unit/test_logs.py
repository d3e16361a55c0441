"""Log lines: JSON with the record's extras and a traceback, the configured level and format, and
the access log's batched lines."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config.load import ConfigError, LogConfig, load_config
from gateway.logs import (ACCESS_LOGGER, AUDIT_LOGGER, LOGIN_FAILED, AccessLog, AccessNote, JsonFormatter,
                          TextFormatter, audit, configure_logging)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(msg: str, extra: dict[str, object] | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    record = logging.LogRecord("tokengate.x", logging.WARNING, __file__, 1, msg, ("y",), exc_info)
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


def test_json_line_has_the_message_the_extras_and_a_traceback() -> None:
    line = JsonFormatter().format(_record("x=%s", {"code": "token_expired", "status": 401}, exc=True))
    assert "\n" not in line.replace("\\n", "")
    data = json.loads(line)
    assert (data["level"], data["logger"], data["message"]) == ("warning", "tokengate.x", "x=y")
    assert (data["code"], data["status"]) == ("token_expired", 401)
    assert data["time"].endswith("Z") and "ValueError: boom" in data["traceback"]
    assert "args" not in data and "msg" not in data


def test_an_audit_line_has_exactly_its_six_fields_in_json_and_reads_whole_as_text(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        audit(LOGIN_FAILED, subject="mallory", session=None, client="192.0.2.7", request_id="r-1",
              outcome="invalid_credentials")
    [record] = caplog.records
    assert (record.name, record.levelno) == (AUDIT_LOGGER, logging.INFO)
    data = json.loads(JsonFormatter().format(record))
    assert set(data) == {"time", "level", "logger", "message", "event", "subject", "session", "client",
                         "request_id", "outcome"}
    assert (data["event"], data["subject"], data["session"], data["outcome"]) == (
        "login_failed", "mallory", None, "invalid_credentials")
    text = TextFormatter("%(name)s %(message)s").format(record)
    assert text.startswith("tokengate.audit login_failed ") and "subject=mallory" in text and "client=192.0.2.7" in text


@pytest.mark.parametrize("field", ["refresh_token", "password", "cookie", "dpop_proof", "csrf"])
def test_audit_refuses_a_field_named_like_a_secret(field: str) -> None:
    with pytest.raises(ValueError):
        audit(LOGIN_FAILED, subject="a", session=None, client=None, request_id=None, outcome="x", **{field: "v"})


def test_audit_refuses_an_unknown_event() -> None:
    with pytest.raises(ValueError):
        audit("signed_in", subject="a", session=None, client=None, request_id=None, outcome="success")


def test_configure_sets_level_and_format() -> None:
    configure_logging(LogConfig(level="warning", format="text"))
    root = logging.getLogger()
    assert root.level == logging.WARNING and not isinstance(root.handlers[0].formatter, JsonFormatter)
    configure_logging(LogConfig())
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    assert logging.getLogger().level == logging.INFO


async def test_access_lines_are_batched_and_carry_only_their_fields() -> None:
    out = io.StringIO()
    access = AccessLog(LogConfig(), out)
    request = make_mocked_request("GET", "/api/x?access_token=secret", headers={"Authorization": "Bearer secret"})
    note = AccessNote(path="/api/x", route="GET /api", upstream="up", subject="alice", upstream_ms=1.23456)
    for _ in range(3):
        access.write(request, 200, "rid-1", time.perf_counter(), note)
    assert out.getvalue() == ""                      # pending until the timer or the size
    access.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3 and "secret" not in out.getvalue()
    assert {k: lines[0][k] for k in ("logger", "request_id", "path", "route", "status", "subject", "upstream_ms")} \
        == {"logger": ACCESS_LOGGER, "request_id": "rid-1", "path": "/api/x", "route": "GET /api", "status": 200,
            "subject": "alice", "upstream_ms": 1.235}
    text = AccessLog(LogConfig(format="text"), out := io.StringIO())
    text.write(request, 404, None, time.perf_counter(), AccessNote(code="no_route"))
    text.flush()
    assert " request " in out.getvalue() and "status=404 code=no_route" in out.getvalue()
    assert not AccessLog(LogConfig(access=False)).enabled and not AccessLog(LogConfig(level="warning")).enabled


@pytest.mark.parametrize("section", [{"level": "loud"}, {"format": "xml"}, {"access": "sometimes"}, {"colour": 1}])
def test_bad_log_section_is_a_config_error(write_config: Callable[..., Path], section: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="log"):
        load_config(write_config(log=section))
