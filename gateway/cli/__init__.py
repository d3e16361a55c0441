"""The ``tokengate`` command: ``main`` (the subcommands and ``serve``), ``args`` (what the subcommands
share: the --config option, usage errors, exit statuses), ``revoke``, ``users`` and ``keygen``.

The top of the package: it may import anything of the gateway, and nothing imports it but
``gateway.__main__`` (and the console script, ``gateway.cli:main``).
"""

from .main import main

__all__ = ["main"]
