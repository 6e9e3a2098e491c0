"""Group layer costs in a 256-member group (GroupManager on mls-rs); one JSON line.

    python3 -m bench.groups_bench

* add: the admin invites one more member, the group growing from 250 to 256 over the
  rounds (commit + signed envelope + Welcome, fragmented); a member processes the commit
  (authorization, proposal check, MLS); the invitee joins (reassembly + MLS join).
* fan-out: one send to 255 others (one seal, 255 unicast payloads), one receive.
* state: size and encode time of the group state the daemon stores after each change:
  format 1 (JSON, everything, what it stored before) and format 2 (binary, views as
  differences, without the commit log, whose entries are stored once each: the bytes
  written per change are the format-2 state plus the new entry).
Medians over a few rounds; timings are wall clock on a shared machine (see load_avg_1m).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.e2e.group_wire import Role
from meshd.e2e.groups import GroupManager
from meshd.e2e.groups_codec import encode_entry, encode_state

GROUP_SIZE = 256
ROUNDS = 5
SENDS = 50


def _peer(root: Path, name: str) -> tuple[MlsRsEngine, GroupManager, Identity]:
    identity = Identity.generate()
    engine = MlsRsEngine(root / name, identity)
    return engine, GroupManager(engine, identity), identity


def main() -> None:
    now = time.time()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _, admin, admin_id = _peer(root, "admin")
        member_engine, member, _ = _peer(root, "member")
        gid, _ = admin.create("bench", now=now)
        kps = [(member_engine.generate_key_package(now=now).data, Role.MEMBER)]
        for i in range(GROUP_SIZE - 2 - ROUNDS - 1):
            extra = MlsRsEngine(root / f"x{i}", Identity.generate())
            kps.append((extra.generate_key_package(now=now).data, Role.MEMBER))
            extra.close()
        t0 = time.perf_counter()
        out = admin.invite(gid, kps, now=now)
        build_s = time.perf_counter() - t0
        for dst, payload in out.sends:
            if dst == member.address:
                member.receive(admin_id.address, payload, now=now)
        commit_ms, process_ms, join_ms, welcome_sizes, commit_sizes = [], [], [], [], []
        for r in range(ROUNDS + 1):
            joiner_engine, joiner, _ = _peer(root, f"j{r}")
            kp = joiner_engine.generate_key_package(now=now).data
            t0 = time.perf_counter()
            out = admin.invite(gid, [(kp, Role.MEMBER)], now=now)
            commit_ms.append((time.perf_counter() - t0) * 1e3)
            to_member = [p for dst, p in out.sends if dst == member.address]
            to_joiner = [p for dst, p in out.sends if dst == joiner.address]
            commit_sizes.append(sum(map(len, to_member)))
            welcome_sizes.append(sum(map(len, to_joiner)))
            t0 = time.perf_counter()
            for p in to_member:
                member.receive(admin_id.address, p, now=now)
            process_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            for p in to_joiner:
                joiner.receive(admin_id.address, p, now=now)
            join_ms.append((time.perf_counter() - t0) * 1e3)
            joiner_engine.close()
        size = len(admin.state(gid).members())
        st = admin.state(gid)
        t0 = time.perf_counter()
        blob = st.to_bytes()  # format 1: what the daemon stored after every change before
        save_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        blob2 = encode_state(st, log=False)  # format 2: what it stores now
        save2_ms = (time.perf_counter() - t0) * 1e3
        full2 = len(encode_state(st, log=True))
        last_entry = len(encode_entry(st.log[max(st.log)]))
        payload = os.urandom(1024)
        send_ms, recv_ms, fanout = [], [], 0
        for _ in range(SENDS):
            t0 = time.perf_counter()
            _, out = admin.send(gid, "chat", payload, now=now)
            send_ms.append((time.perf_counter() - t0) * 1e3)
            fanout = len(out.sends)
            mine = next(p for dst, p in out.sends if dst == member.address)
            t0 = time.perf_counter()
            got = member.receive(admin_id.address, mine, now=now)
            recv_ms.append((time.perf_counter() - t0) * 1e3)
            assert got.events, "the member did not read the message"
    print(
        json.dumps(
            {
                "bench": "groups",
                "group_size": size,
                "build_s": round(build_s, 3),
                "add_commit_ms_median": round(statistics.median(commit_ms[1:]), 2),
                "add_commit_bytes": commit_sizes[-1],
                "welcome_bytes": statistics.median(welcome_sizes),
                "add_process_on_member_ms_median": round(statistics.median(process_ms[1:]), 2),
                "join_ms_median": round(statistics.median(join_ms[1:]), 2),
                "state_json_bytes": len(blob),
                "state_json_ms": round(save_ms, 2),
                "state_v2_bytes": len(blob2),
                "state_v2_ms": round(save2_ms, 2),
                "state_v2_with_log_bytes": full2,
                "state_write_bytes_per_change": len(blob2) + last_entry,
                "send_1k_fanout": fanout,
                "send_1k_ms_median": round(statistics.median(send_ms), 3),
                "receive_1k_ms_median": round(statistics.median(recv_ms), 3),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
