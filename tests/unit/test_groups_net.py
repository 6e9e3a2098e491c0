"""A test mesh for the sans-IO group layer: several ``GroupManager``s on real ``MlsRsEngine``s
(tmp dirs), a manual clock, and a seeded delivery that delays, reorders, duplicates and
drops-then-retransmits (like the mesh's end-to-end reliability), plus offline nodes and
partitions whose traffic is lost for good (the worst case for catch-up).

The other ``test_groups_*`` modules import ``Net`` from here.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.e2e.group_wire import Role
from meshd.e2e.groups import GroupManager
from meshd.e2e.groups_events import (
    GroupConfig,
    GroupEvent,
    GroupMessage,
    KeyPackageNeeded,
    Output,
)


@dataclass
class Peer:
    name: str
    identity: Identity
    engine: MlsRsEngine
    mgr: GroupManager
    events: list[GroupEvent] = field(default_factory=list)

    @property
    def address(self) -> NodeAddress:
        return self.identity.address

    def messages(self, group_id: bytes) -> list[tuple[str, bytes]]:
        return [
            (e.app_id, e.content)
            for e in self.events
            if isinstance(e, GroupMessage) and e.group_id == group_id
        ]

    def texts(self, group_id: bytes) -> list[bytes]:
        return [c for _, c in self.messages(group_id)]


class Net:
    """Peers plus an in-memory mesh with a manual clock."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int = 1,
        loss: float = 0.1,
        dup: float = 0.05,
        config: GroupConfig | None = None,
    ) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.loss = loss
        self.dup = dup
        self.config = config or GroupConfig(catchup_retry_s=2.0, fork_settle_s=2.0)
        self.now = time.time()  # engines check key package lifetimes against unix time
        self.peers: dict[str, Peer] = {}
        self.by_address: dict[NodeAddress, Peer] = {}
        self.offline: set[str] = set()
        self.sides: list[set[str]] | None = None
        self._queue: list[tuple[float, int, NodeAddress, NodeAddress, bytes]] = []
        self._seq = 0
        self.delivered = 0
        self.lost_for_good = 0

    def add(self, name: str) -> Peer:
        identity = Identity.generate()
        engine = MlsRsEngine(self.root / name, identity)
        peer = Peer(name, identity, engine, GroupManager(engine, identity, config=self.config))
        self.peers[name] = peer
        self.by_address[identity.address] = peer
        return peer

    def close(self) -> None:
        for p in self.peers.values():
            p.engine.close()

    def kp(self, name: str) -> bytes:
        return self.peers[name].engine.generate_key_package(now=self.now).data

    # -- delivery -----------------------------------------------------------------

    def out(self, src: Peer, output: Output) -> Output:
        src.events.extend(output.events)
        for dst, payload in output.sends:
            self._push(src.address, dst, payload, self.rng.uniform(0.01, 0.3))
        for ev in output.events:
            if isinstance(ev, KeyPackageNeeded):  # what the daemon does (key_package_for)
                invitee = self.by_address[ev.address]
                kp = invitee.engine.generate_key_package(now=self.now).data
                self.out(src, src.mgr.invite(ev.group_id, [(kp, ev.role)], now=self.now))
        return output

    def _push(self, src: NodeAddress, dst: NodeAddress, payload: bytes, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, src, dst, payload))

    def _reachable(self, a: str, b: str) -> bool:
        if a in self.offline or b in self.offline:
            return False
        if self.sides is None:
            return True
        return any(a in s and b in s for s in self.sides)

    def run(self, seconds: float = 5.0, *, tick_every: float = 0.5) -> None:
        """Deliver and tick everyone until ``seconds`` of virtual time passed."""
        end = self.now + seconds
        next_tick = self.now + tick_every
        while self.now < end:
            t = min(end, next_tick, self._queue[0][0] if self._queue else end)
            self.now = max(self.now, t)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, payload = heapq.heappop(self._queue)
                self._deliver(src, dst, payload)
            if self.now >= next_tick:
                next_tick += tick_every
                for p in self.peers.values():
                    if p.name not in self.offline:
                        self.out(p, p.mgr.tick(now=self.now))

    def _deliver(self, src: NodeAddress, dst: NodeAddress, payload: bytes) -> None:
        s, d = self.by_address[src], self.by_address.get(dst)
        if d is None:
            return
        if not self._reachable(s.name, d.name):
            self.lost_for_good += 1
            return
        if self.rng.random() < self.loss:  # lost on the way: the mesh retransmits
            self._push(src, dst, payload, self.rng.uniform(0.5, 1.5))
            return
        if self.rng.random() < self.dup:
            self._push(src, dst, payload, self.rng.uniform(0.0, 1.0))
        self.delivered += 1
        self.out(d, d.mgr.receive(src, payload, now=self.now))

    # -- scenario helpers -------------------------------------------------------------

    def group(self, admin: str, members: Iterable[str], name: str = "g") -> bytes:
        a = self.peers[admin]
        gid, output = a.mgr.create(name, now=self.now)
        self.out(a, output)
        invitees = [(self.kp(m), Role.MEMBER) for m in members]
        if invitees:
            self.out(a, a.mgr.invite(gid, invitees, now=self.now))
        self.run(3.0)
        return gid

    def send(self, name: str, gid: bytes, text: bytes, app: str = "chat") -> bytes:
        p = self.peers[name]
        mid, output = p.mgr.send(gid, app, text, now=self.now)
        self.out(p, output)
        return mid

    def tips(self, gid: bytes, names: Iterable[str]) -> set[tuple[int, bytes]]:
        out = set()
        for n in names:
            st = self.peers[n].mgr.state(gid)
            out.add((st.epoch, st.tip))
        return out

    def secrets(self, gid: bytes, names: Iterable[str]) -> set[bytes]:
        return {self.peers[n].engine.export_secret(gid, b"t", b"", 16) for n in names}


def test_net_delivers_a_group_message_to_everyone(tmp_path: Path) -> None:
    net = Net(tmp_path, seed=3)
    for n in "abc":
        net.add(n)
    gid = net.group("a", "bc")
    net.send("a", gid, b"hello")
    net.run(3.0)
    assert net.peers["b"].texts(gid) == [b"hello"] == net.peers["c"].texts(gid)
    assert net.delivered > 0
    net.close()
