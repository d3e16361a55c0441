"""What every ``tokengate`` subcommand builds on: the ``--config`` option and the config it names, and
the two ways a command ends badly, each one line on stderr: ``UsageError`` (bad input, exit 2) and
``fail()`` (not found, store down ..., exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.load import GatewayConfig, load_config

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """Bad command-line input; the message says what to change."""


def print_error(message: str) -> None:
    print(f"tokengate: {message}", file=sys.stderr)


def fail(message: str) -> int:
    """Report a failure that is not bad input (not found, store down ...): exit status 1."""
    print_error(message)
    return EXIT_FAILED


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (default: $TOKENGATE_CONFIG)")


def config_from(args: argparse.Namespace) -> GatewayConfig:
    path = args.config or os.environ.get("TOKENGATE_CONFIG")
    if not path:
        raise UsageError("no config file: pass --config PATH or set TOKENGATE_CONFIG")
    return load_config(path)
