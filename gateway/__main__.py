"""``python -m gateway`` is the ``tokengate`` command."""

from .cli import main

raise SystemExit(main())
