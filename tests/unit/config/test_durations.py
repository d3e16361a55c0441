"""gateway.config.durations: duration strings (30s, 15m, 7d) and rates (5/min) of the config file."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.durations import format_duration, parse_duration_s, parse_rate, parse_size_bytes


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("15m", 900), ("7d", 604800), ("1h", 3600), ("2w", 1209600), ("500ms", 0.5), ("1.5m", 90),
    ("0s", 0), (" 15m ", 900), ("15 m", 900), ("3650d", 3650 * 86400),
])
def test_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("value", [
    15, 15.0, 0, True, None, [], "15", "15x", "-1s", "+1s", "abc", "1.5.2m", "", "m", "1e3s", "15M", "15 mins",
    ".5s", "5.s", "1h30m", "\u0661\u0665m", "3651d", "9" * 400 + "s",
])
def test_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(value)


@pytest.mark.parametrize("seconds, text", [(900, "15m"), (86400, "1d"), (90, "90s"), (3600, "1h"), (0.5, "0.5s"),
                                           (0, "0s"), (7 * 86400, "7d")])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text, rate", [
    ("5/min", (5, 60)), ("3/h", (3, 3600)), ("30/minute", (30, 60)), ("1/s", (1, 1)), ("10/sec", (10, 1)),
    ("2/hour", (2, 3600)), ("100/d", (100, 86400)), (" 5 / min ", (5, 60)), ("1000000/day", (1000000, 86400)),
])
def test_rate(text: str, rate: tuple[int, int]) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("value", ["0/min", "abc", "5", "5/", "/min", "-1/min", "1.5/min", "5/MIN", "5/fortnight",
                                   "5/2min", "", 5, None, ["5/min"], "1000001/s", "9" * 5000 + "/s"])
def test_not_a_rate(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_rate(value)



@pytest.mark.parametrize("value, size", [
    ("64KiB", 65536), ("64kib", 65536), ("1MiB", 1 << 20), ("10kB", 10_000), ("100B", 100), ("100", 100), (100, 100),
    (" 2 MiB ", 2 << 20), ("0", 0), ("1GiB", 1 << 30),
])
def test_size(value: Any, size: int) -> None:
    assert parse_size_bytes(value) == size


@pytest.mark.parametrize("value", [None, True, 1.5, "", "KiB", "-1KiB", "1.5MiB", "64 KiBs", "2GiB", "1TiB",
                                   "9" * 40, "\u0661KiB"])
def test_not_a_size(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size_bytes(value)
