"""Argument types the kit's commands share (argparse ``type=``): bad values get a clear message."""

from __future__ import annotations

import argparse


def positive(value: str) -> int:
    """A whole number above 0."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number above 0")
    return int(value)
