"""Argument types the kit's commands share (argparse ``type=``): bad values get a clear message."""

from __future__ import annotations

import argparse

from gateway.config.durations import parse_duration_s


def positive(value: str) -> int:
    """A whole number above 0."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number above 0")
    return int(value)


def duration(value: str) -> float:
    """A duration like 10s or 2m (a bare number is seconds)."""
    try:
        return parse_duration_s(value if not value.replace(".", "", 1).isdigit() else f"{value}s")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate(value: str) -> float:
    """Requests per second, like 500/s."""
    number = value.strip().removesuffix("/s")
    try:
        per_s = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a rate; write requests per second, like 500/s") from None
    if per_s <= 0:
        raise argparse.ArgumentTypeError("the rate must be above 0")
    return per_s
