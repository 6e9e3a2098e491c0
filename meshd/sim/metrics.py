"""What happened to every message, and the one-line JSON figures computed from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshd.router.events import (
    CoreEvent,
    DeliveryState,
    DeliveryStateChanged,
    FrameRejected,
    MessageReceived,
)
from meshd.router.frames import FrameType
from meshd.sim.engine import Counters

_FINAL = (DeliveryState.DELIVERED, DeliveryState.FAILED)


class MessageLog:
    """Per-message record, indexed by the scenario's message number ``k``."""

    def __init__(self) -> None:
        self.src: list[int] = []
        self.dst: list[int] = []
        self.sent_at: list[float] = []
        self.received_at: list[float | None] = []
        self.state: list[DeliveryState | None] = []
        self.reason: list[str | None] = []
        self._by_sender: dict[tuple[int, bytes], int] = {}
        self._by_receiver: dict[tuple[int, bytes], int] = {}
        self.sent = 0
        self.outstanding = 0
        self.duplicates = 0
        self.unknown_received = 0
        self.rejected: dict[str, int] = {}

    def add(self, src: int, dst: int, at: float) -> int:
        self.src.append(src)
        self.dst.append(dst)
        self.sent_at.append(at)
        self.received_at.append(None)
        self.state.append(None)
        self.reason.append(None)
        return len(self.src) - 1

    def bind(self, k: int, message_id: bytes) -> None:
        """The core accepted message ``k`` under ``message_id``."""
        self._by_sender[(self.src[k], message_id)] = k
        self._by_receiver[(self.dst[k], message_id)] = k
        self.sent += 1
        if self.state[k] is None:
            self.state[k] = DeliveryState.QUEUED
        if self.state[k] not in _FINAL:
            self.outstanding += 1

    def on_event(self, node: int, event: CoreEvent, now: float) -> None:
        if isinstance(event, MessageReceived):
            k = self._by_receiver.get((node, event.message_id))
            if k is None:
                self.unknown_received += 1
            elif self.received_at[k] is None:
                self.received_at[k] = now
            else:
                self.duplicates += 1
        elif isinstance(event, DeliveryStateChanged):
            k = self._by_sender.get((node, event.message_id))
            if k is None:
                # Not one of the scenario's messages.
                return
            was = self.state[k]
            if was in _FINAL:
                return
            self.state[k] = event.state
            self.reason[k] = event.reason
            if event.state in _FINAL:
                self.outstanding -= 1
        elif isinstance(event, FrameRejected):
            key = event.reason.split(":")[0][:40]
            self.rejected[key] = self.rejected.get(key, 0) + 1

    def window_report(self, start: float, end: float, lifetime: float) -> dict[str, Any]:
        """Messages sent during [start, end): how many got through, when, within lifetime."""
        ks = [k for k, t in enumerate(self.sent_at) if start <= t < end]
        got = [k for k in ks if self.received_at[k] is not None]
        after = [k for k in got if (self.received_at[k] or 0.0) >= end]
        in_time = [k for k in got if (self.received_at[k] or 0.0) - self.sent_at[k] <= lifetime]
        return {"window": [start, end], "sent": len(ks), "delivered": len(got),
                "delivered_after_heal": len(after), "delivered_within_lifetime": len(in_time),
                "delivery_ratio": round(len(in_time) / len(ks), 4) if ks else None}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def _type_name(code: int) -> str:
    try:
        return FrameType(code).name.lower()
    except ValueError:
        return f"0x{code:02x}"


def summarize(log: MessageLog, counters: Counters, *, strategy: str, nodes: int,
              topology: str, mean_degree: float, loss: float, virtual_s: float,
              wall_s: float, seed: int) -> dict[str, Any]:
    """The figures of one run, in the key order of the issue."""
    n_msgs = len(log.src)
    latencies = [r - s for r, s in zip(log.received_at, log.sent_at, strict=True)
                 if r is not None]
    delivered = len(latencies)
    tx_by_type = {_type_name(code): count for code, count in enumerate(counters.tx_by_type)
                  if count}
    control_bytes = sum(b for code, b in enumerate(counters.bytes_by_type)
                        if code != FrameType.DATA)
    minutes = virtual_s / 60.0
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    undelivered: dict[str, int] = {}
    for k in range(n_msgs):
        if log.received_at[k] is None:
            state = log.state[k]
            label = "not_sent" if state is None else state.value
            if log.reason[k]:
                label += f": {log.reason[k]}"
            undelivered[label] = undelivered.get(label, 0) + 1
    return {
        "strategy": strategy,
        "nodes": nodes,
        "topology": topology,
        "mean_degree": round(mean_degree, 2),
        "loss": loss,
        "messages": n_msgs,
        "delivered": delivered,
        "delivery_ratio": round(delivered / n_msgs, 4) if n_msgs else None,
        "duplicates_to_app": log.duplicates,
        "latency_p50_s": None if p50 is None else round(p50, 4),
        "latency_p95_s": None if p95 is None else round(p95, 4),
        "tx_per_delivered": round(counters.tx_total / delivered, 2) if delivered else None,
        "tx_total": counters.tx_total,
        "tx_per_message": round(counters.tx_total / n_msgs, 2) if n_msgs else None,
        "tx_by_type": tx_by_type,
        "control_bytes_per_node_per_min": (
            round(control_bytes / nodes / minutes, 1) if minutes > 0 else None),
        "peak_rss_mb": None,
        "events_per_s": round(counters.events / wall_s) if wall_s > 0 else None,
        "wall_s": round(wall_s, 2),
        "virtual_s": round(virtual_s, 3),
        "seed": seed,
        "acked": sum(1 for s in log.state if s is DeliveryState.DELIVERED),
        "sender_states": _count(s.value if s else "not_sent" for s in log.state),
        "undelivered_by_state": undelivered,
        "drops": dict(counters.drops),
        "rejected": dict(log.rejected),
        "events": counters.events,
        "timer_calls": counters.timers,
        "overdue_timers": counters.overdue_timers,
    }
