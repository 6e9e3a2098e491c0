"""Entry point of ``python -m meshd.sim``."""

from __future__ import annotations

import sys

from meshd.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
