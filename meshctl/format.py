"""Human and JSON output for meshctl: aligned tables, durations, events."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import node_pb2 as npb

_PAYLOAD_PREVIEW = 60


def to_json(message: Message) -> str:
    """One line of JSON (proto field names; bytes as base64, enums by name)."""
    return json.dumps(to_dict(message), sort_keys=True)


def to_dict(message: Message) -> dict[str, object]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s`` (two units at most)."""
    s = max(0, int(seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def when(ts: Timestamp) -> str:
    """Local wall-clock time of a timestamp; ``-`` when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


def until(ts: Timestamp, *, now: float) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    left = ts.seconds + ts.nanos / 1e9 - now
    return "expired" if left <= 0 else "in " + duration(left)


def enum_name(full: str, prefix: str) -> str:
    """``DELIVERY_STATE_DELIVERED`` -> ``delivered``."""
    return full.removeprefix(prefix).lower() if full else "?"


def state_name(state: mpb.DeliveryState.ValueType) -> str:
    return enum_name(mpb.DeliveryState.Name(state), "DELIVERY_STATE_")


def payload_text(payload: bytes) -> str:
    """The payload as text when it is UTF-8 (shortened, one line), else its size."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(payload)} bytes>"
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= _PAYLOAD_PREVIEW else text[: _PAYLOAD_PREVIEW - 1] + "…"


def hops_text(m: mpb.Message) -> str:
    if not m.HasField("hops"):
        return "-"
    return "1 hop" if m.hops == 1 else f"{m.hops} hops"


def status_text(
    resp: npb.GetStatusResponse, transports: Sequence[npb.Transport]
) -> str:
    st, caller = resp.status, resp.caller
    who = f"uid {caller.uid} gid {caller.gid} pid {caller.pid}, app {caller.app_id}"
    pairs = [
        ("address", st.address),
        ("version", st.version),
        ("uptime", duration(st.uptime_s)),
        ("neighbours", str(st.neighbours)),
        ("routes", str(st.routes)),
        ("outbox", str(st.outbox)),
    ]
    if st.state_dir:
        pairs.append(("state dir", st.state_dir))
    pairs.append(("caller", who + (" (admin)" if caller.is_admin else "")))
    width = max(len(k) for k, _ in pairs)
    lines = [f"{k.ljust(width)}  {v}" for k, v in pairs]
    if transports:
        lines.append("")
        lines.append(transports_table(transports))
    return "\n".join(lines)


def transports_table(transports: Sequence[npb.Transport]) -> str:
    rows = [
        [
            t.name,
            enum_name(npb.TransportState.Name(t.state), "TRANSPORT_STATE_"),
            str(t.links),
            ", ".join(t.local_endpoints) or "-",
            t.detail or "-",
        ]
        for t in transports
    ]
    return table(["TRANSPORT", "STATE", "LINKS", "ENDPOINTS", "DETAIL"], rows)


def neighbours_table(neighbours: Sequence[npb.Neighbour], *, now: float) -> str:
    if not neighbours:
        return "no neighbours"
    rows = [
        [
            n.address,
            enum_name(npb.LinkKind.Name(n.kind), "LINK_KIND_"),
            f"{n.quality:.2f}",
            f"{n.battery}%" if n.HasField("battery") else "-",
            "yes" if n.keep else "no",
            duration(now - (n.up_since.seconds + n.up_since.nanos / 1e9)),
        ]
        for n in neighbours
    ]
    return table(["ADDRESS", "LINK", "QUALITY", "BATTERY", "KEEP", "UP"], rows)


def routes_table(routes: Sequence[npb.Route], *, now: float) -> str:
    if not routes:
        return "no routes"
    rows = [
        [r.dst, r.next_hop, str(r.hops), f"{r.cost:.2f}", until(r.expires_at, now=now)]
        for r in routes
    ]
    return table(["DESTINATION", "NEXT HOP", "HOPS", "COST", "EXPIRES"], rows)


def history_table(messages: Sequence[mpb.Message]) -> str:
    if not messages:
        return "no messages"
    rows = []
    grouped = any(m.group_id for m in messages)  # a GROUP column only when one is
    for m in messages:
        outgoing = m.direction == mpb.DIRECTION_OUTGOING
        state = state_name(m.state) if outgoing else hops_text(m)
        if m.reason:
            state += f" ({m.reason})"
        # Sent to a group: the state is over every member's copy; the peer is this node.
        peer = "(all members)" if outgoing and m.group_id else m.peer
        row = [
            when(m.created_at),
            "to" if outgoing else "from",
            peer,
            state,
            m.message_id[:16],
            payload_text(m.payload),
        ]  # fmt: skip
        if grouped:
            row.insert(3, m.group_id[:16] or "-")
        rows.append(row)
    head = ["TIME", "DIR", "PEER", "STATE", "ID", "TEXT"]
    if grouped:
        head.insert(3, "GROUP")
    return table(head, rows)


def event_line(ev: mpb.Event) -> str:
    """One human line per event."""
    head = f"{ev.cursor:>6}  {when(ev.at)}  "
    kind = ev.WhichOneof("kind")
    if kind == "message_received":
        m = ev.message_received.message
        hops = f", {hops_text(m)}" if m.HasField("hops") else ""
        text = payload_text(m.payload)
        return head + f"message from {m.peer} ({m.message_id[:16]}{hops}): {text}"
    if kind == "delivery_state":
        d = ev.delivery_state
        reason = f" ({d.reason})" if d.reason else ""
        return head + f"{state_name(d.state)} {d.message_id[:16]} to {d.dst}{reason}"
    if kind in ("neighbour_up", "neighbour_down"):
        n = ev.neighbour_up if kind == "neighbour_up" else ev.neighbour_down
        verb = "up" if kind == "neighbour_up" else "down"
        return head + f"neighbour {verb} {n.peer}" + (f" ({n.detail})" if n.detail else "")
    if kind == "path_changed":
        p = ev.path_changed
        return head + f"path to {p.dst} changed" + (f": {p.detail}" if p.detail else "")
    if kind == "key_changed":
        k = ev.key_changed
        return head + f"KEY CHANGED for {k.peer}" + (f": {k.detail}" if k.detail else "")
    if kind == "session":
        se = ev.session
        name = mpb.SessionEventKind.Name(se.kind).removeprefix("SESSION_EVENT_KIND_").lower()
        return head + f"{name.replace('_', ' ')} {se.peer}" + (f" ({se.detail})" if se.detail
                                                                else "")  # fmt: skip
    if kind == "group":
        g = ev.group
        name = mpb.GroupEventKind.Name(g.kind).removeprefix("GROUP_EVENT_KIND_").lower()
        who = f" {g.peer}" if g.peer else ""
        extra = f" ({g.detail})" if g.detail else ""
        return head + f"group {g.group_id[:16]} {name.replace('_', ' ')}{who}{extra}"
    return head + "unknown event (newer meshd?)"
