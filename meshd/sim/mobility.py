"""Random waypoint mobility: each node walks to a random point at its own speed, repeats."""

from __future__ import annotations

import math
import random

from meshd.sim.topology import Point


class RandomWaypoint:
    """Moves positions in place inside a ``side`` x ``side`` square (no pause time)."""

    def __init__(self, positions: list[Point], side: float, speed: float,
                 rng: random.Random) -> None:
        self.positions = positions
        self._side = side
        self._rng = rng
        # Speeds in [0.5, 1.5] x the mean, so that not every node moves in lock step.
        self._speed = [speed * rng.uniform(0.5, 1.5) for _ in positions]
        self._target = [self._pick() for _ in positions]

    def _pick(self) -> Point:
        return (self._rng.uniform(0, self._side), self._rng.uniform(0, self._side))

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
                self._target[i] = self._pick()
            self.positions[i] = (x, y)
