"""Random waypoint mobility: each node walks to a random point at its own speed, repeats."""

from __future__ import annotations

import math
import random

from meshd.sim.topology import Point

Area = tuple[float, float, float, float]


class RandomWaypoint:
    """Moves positions in place, each node inside its area (no pause time).

    ``areas[i]`` is node i's (x0, y0, x1, y1); by default the whole ``side`` square. The
    clusters topology gives each node its cluster's square, so clusters drift but persist.
    """

    def __init__(self, positions: list[Point], side: float, speed: float,
                 rng: random.Random, areas: list[Area] | None = None) -> None:
        self.positions = positions
        self._areas = areas if areas is not None else [(0.0, 0.0, side, side)] * len(positions)
        self._rng = rng
        # Speeds in [0.5, 1.5] x the mean, so that not every node moves in lock step.
        self._speed = [speed * rng.uniform(0.5, 1.5) for _ in positions]
        self._target = [self._pick(i) for i in range(len(positions))]

    def _pick(self, i: int) -> Point:
        x0, y0, x1, y1 = self._areas[i]
        return (self._rng.uniform(x0, x1), self._rng.uniform(y0, y1))

    def step(self, dt: float) -> None:
        for i, (x, y) in enumerate(self.positions):
            budget = self._speed[i] * dt
            while budget > 0:
                tx, ty = self._target[i]
                dist = math.hypot(tx - x, ty - y)
                if dist > budget:
                    x += (tx - x) * budget / dist
                    y += (ty - y) * budget / dist
                    break
                x, y = tx, ty
                budget -= dist
                self._target[i] = self._pick(i)
            self.positions[i] = (x, y)
