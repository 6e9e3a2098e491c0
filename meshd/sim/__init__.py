"""Discrete-event mesh simulator: real MeshCore instances (or the flood baseline) in
virtual time over generated topologies. Run ``python -m meshd.sim --help``.

Examples (each prints one JSON line)::

    python -m meshd.sim --nodes 1000 --topology rgg --loss 0.05 --messages 2000 \
        --pairs 200 --strategy meshd --seed 1
    python -m meshd.sim --nodes 300 --topology clusters --mobility 1.0 --strategy both
    python -m meshd.sim --nodes 300 --partition 60:660 --cross-partition --lifetime 3600

Modules: ``engine`` (event heap, links with loss/latency/bandwidth and FIFO queues, the
adapter loop), ``topology`` (generators, partition cut), ``mobility`` (random waypoint),
``flood`` (the reference SDK's controlled flood), ``scenario`` (one run), ``metrics``
(per-message log, figures), ``cli``. ``bench/mesh_sim.py`` runs the issue's benchmark.
"""

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
