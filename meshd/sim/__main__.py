"""Entry point of ``python -m meshd.sim``."""

from __future__ import annotations

import sys

from meshd.sim.cli import main, pin_hash_seed

if __name__ == "__main__":
    pin_hash_seed("meshd.sim")
    sys.exit(main())
