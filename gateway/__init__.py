"""tokengate: an async JWT edge gateway and reverse proxy."""

__version__ = "0.1.0"
