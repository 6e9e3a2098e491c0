"""meshd: an offline-first mesh networking daemon."""

__version__ = "0.1.0"
