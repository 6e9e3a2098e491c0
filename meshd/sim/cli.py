"""``python -m meshd.sim``: run one scenario and print ONE JSON line of figures.

With ``--strategy both`` the line nests both results and their transmission ratio:
``{"meshd": {...}, "flood": {...}, "tx_ratio": meshd_tx_per_delivered / flood's}``.
Both strategies see the same graph, identities, batteries and send times. ``peak_rss_mb``
is the peak of the process that ran the strategy (with ``--parallel``, its own worker).
Figures other than ``wall_s``, ``events_per_s`` and ``peak_rss_mb`` depend only on the
arguments (the entry point pins PYTHONHASHSEED, see ``pin_hash_seed``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from meshd.errors import ConfigError, MeshdError
from meshd.sim.scenario import Scenario, compare, run_strategy
from meshd.sim.topology import TOPOLOGIES


def _window(text: str) -> tuple[float, float]:
    try:
        start, end = (float(part) for part in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected START:END in seconds, e.g. 60:660") from exc
    return start, end


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshd.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Scenario()
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--topology", choices=TOPOLOGIES, default=d.topology)
    p.add_argument("--degree", type=float, default=d.degree,
                   help="target mean degree of rgg/clusters (default %(default)s)")
    p.add_argument("--clusters", type=int, default=d.clusters,
                   help="number of clusters (default: nodes / 25)")
    p.add_argument("--loss", type=float, default=d.loss, help="per-transmission loss")
    p.add_argument("--latency", type=float, default=d.latency, help="seconds per hop")
    p.add_argument("--bandwidth", type=float, default=d.bandwidth,
                   help="bytes/s per link direction, 0 = infinite")
    p.add_argument("--queue-limit", type=float, default=d.queue_limit,
                   help="seconds of backlog per link queue before tail drop")
    p.add_argument("--mobility", type=float, default=d.mobility,
                   help="mean node speed in m/s (random waypoint), 0 = static")
    p.add_argument("--mobility-interval", type=float, default=d.mobility_interval)
    p.add_argument("--partition", type=_window, default=None, metavar="START:END",
                   help="cut the graph in two halves during this window")
    p.add_argument("--cross-partition", action="store_true",
                   help="every conversation straddles the partition cut")
    p.add_argument("--battery", choices=("random", "full"), default=d.battery)
    p.add_argument("--messages", type=int, default=d.messages)
    p.add_argument("--pairs", type=int, default=d.pairs)
    p.add_argument("--size", type=int, default=d.size, help="payload bytes")
    p.add_argument("--warmup", type=float, default=d.warmup)
    p.add_argument("--duration", type=float, default=d.duration, help="send window (s)")
    p.add_argument("--drain", type=float, default=d.drain,
                   help="how long to keep running after the last send (s)")
    p.add_argument("--lifetime", type=float, default=None, help="message lifetime (s)")
    p.add_argument("--flood-ttl", type=int, default=None,
                   help="flood baseline TTL override (default: the reference's 8, or 5 "
                   "at degree >= 6; its hard cap is 16)")
    p.add_argument("--strategy", choices=("meshd", "flood", "both"), default="meshd")
    p.add_argument("--parallel", action="store_true",
                   help="with --strategy both, run the two strategies in two processes")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    sc = Scenario(
        nodes=args.nodes, topology=args.topology, degree=args.degree, clusters=args.clusters,
        loss=args.loss, latency=args.latency, bandwidth=args.bandwidth,
        queue_limit=args.queue_limit, mobility=args.mobility,
        mobility_interval=args.mobility_interval, partition=args.partition,
        cross_partition=args.cross_partition, battery=args.battery, messages=args.messages,
        pairs=args.pairs, size=args.size, warmup=args.warmup, duration=args.duration,
        drain=args.drain, lifetime=args.lifetime, flood_ttl=args.flood_ttl,
        seed=args.seed)
    sc.validate()
    return sc


def run(sc: Scenario, strategy: str, *, parallel: bool = False) -> dict[str, Any]:
    """One strategy's figures, or both nested (see the module docstring)."""
    if strategy != "both":
        return run_strategy(sc, strategy)
    if parallel:
        with ProcessPoolExecutor(max_workers=2) as pool:
            fm = pool.submit(run_strategy, sc, "meshd")
            ff = pool.submit(run_strategy, sc, "flood")
            return compare(fm.result(), ff.result())
    return compare(run_strategy(sc, "meshd"), run_strategy(sc, "flood"))


def pin_hash_seed(module: str) -> None:
    """Re-run ``python -m module`` with PYTHONHASHSEED=0 unless the caller chose a value.

    str/bytes hashing is salted per process, so a core that iterates over a set of
    addresses or ids visits them in a different order in every process; pinning the salt
    keeps "same seed, same JSON" true across runs (and the forked workers inherit it).
    """
    if "PYTHONHASHSEED" not in os.environ:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sc = scenario_from_args(args)
        result = run(sc, args.strategy, parallel=args.parallel)
    except ConfigError as exc:
        print(f"meshd.sim: error: {exc}", file=sys.stderr)
        return 2
    except MeshdError as exc:
        print(f"meshd.sim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=False))
    return 0
