"""Discrete-event mesh simulator: real MeshCore instances (or the flood baseline) in
virtual time over generated topologies. Run ``python -m meshd.sim --help``."""

from __future__ import annotations

from meshd.sim.engine import Engine, LinkParams, SimCore
from meshd.sim.flood import FloodConfig, FloodCore
from meshd.sim.scenario import Scenario, compare, run_strategy

__all__ = [
    "Engine",
    "FloodConfig",
    "FloodCore",
    "LinkParams",
    "Scenario",
    "SimCore",
    "compare",
    "run_strategy",
]
