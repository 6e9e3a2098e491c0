"""Session logic driven back to back: real MLS engines, real stores, a manual clock."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.e2e import session_wire as sw
from meshd.e2e.requests import AcceptFrom, E2eSessions
from meshd.e2e.sessions import Deliver, Expired, Notice, SendPayload
from meshd.envelope import Envelope
from meshd.errors import FailedPrecondition, ResourceExhausted
from meshd.store import Store
from meshd.store.sessions import SessionTables

T0 = 1_800_000_000.0


@dataclass
class Peer:
    identity: Identity
    root: Path
    store: Store
    engine: MlsRsEngine
    e2e: E2eSessions
    pins: dict[NodeAddress, tofu.Contact]

    @property
    def address(self) -> NodeAddress:
        return self.identity.address

    def restart(self) -> None:
        """A new engine run over the same state (key package private keys are lost)."""
        self.engine.close()
        self.store.commit()
        self.engine = MlsRsEngine(self.root / "mls", self.identity)
        self.e2e = E2eSessions(self.engine, SessionTables(self.store), pinned=self.pins.get,
                               identity=self.identity,
                               default_accept_from=self.e2e.accept_from)  # fmt: skip


def make_peer(tmp: Path, name: str, accept: AcceptFrom = AcceptFrom.ANYONE) -> Peer:
    ident = Identity.generate()
    root = tmp / name
    root.mkdir()
    store = Store.open(root / "meshd.db")
    engine = MlsRsEngine(root / "mls", ident)
    pins: dict[NodeAddress, tofu.Contact] = {}
    e2e = E2eSessions(engine, SessionTables(store), pinned=pins.get, identity=ident,
                      default_accept_from=accept)  # fmt: skip
    return Peer(ident, root, store, engine, e2e, pins)


def publish(peer: Peer, to: Peer, now: float = T0) -> None:
    """``to`` learns ``peer``'s announce extensions (its published key package)."""
    ext = peer.e2e.publish(now=now)
    assert ext is not None
    to.e2e.learn_extensions(peer.address, ext, now=now)


def send(src: Peer, dst: Peer, text: bytes, now: float = T0) -> bytes:
    """An app message as the node sends it: history row, then seal (or wait)."""
    mid = os.urandom(8)
    src.store.add_outgoing(message_id=mid, app_id="chat", dst=dst.address, content=text,
                           created_at=now, expires_at=now + 3600)  # fmt: skip
    payload = src.e2e.seal_or_queue(dst.address, Envelope("chat", text), mid, now=now,
                                    expires_at=now + 3600)  # fmt: skip
    if payload is not None:
        src.e2e.actions.append(SendPayload(dst.address, payload, mid))
    return mid


Out = list[tuple[NodeAddress, object]]


def run(peers: list[Peer], now: float = T0, *, drop: set[int] | None = None) -> Out:
    """Carry every queued SendPayload to its destination until quiet; the rest of the
    actions (deliveries, notices, expiries) are returned in order."""
    by_address = {p.address: p for p in peers}
    others: Out = []
    sent = 0
    busy = True
    while busy:
        busy = False
        for p in peers:
            while p.e2e.actions:
                action = p.e2e.actions.popleft()
                busy = True
                if isinstance(action, SendPayload):
                    sent += 1
                    if drop and sent in drop:
                        continue
                    by_address[action.dst].e2e.receive(p.address, action.payload, hops=1,
                                                       now=now)  # fmt: skip
                else:
                    others.append((p.address, action))
    return others


def delivered(actions: Out, at: Peer) -> list[bytes]:
    return [a.content for who, a in actions if who == at.address and isinstance(a, Deliver)]


def notices(actions: Out, kind: str) -> list[Notice]:
    return [a for _, a in actions if isinstance(a, Notice) and a.kind == kind]


@pytest.fixture
def ab(tmp_path: Path) -> tuple[Peer, Peer]:
    return make_peer(tmp_path, "a"), make_peer(tmp_path, "b")


def test_first_message_needs_no_round_trip_and_then_sessions_are_established(
    ab: tuple[Peer, Peer],
) -> None:
    a, b = ab
    publish(b, a)
    send(a, b, b"hello")
    first = a.e2e.actions[0]
    assert isinstance(first, SendPayload) and first.payload[0] == sw.Kind.SESSION_INIT
    out = run([a, b])
    assert delivered(out, b) == [b"hello"]
    assert a.e2e.info(b.address).established and b.e2e.info(a.address).established
    send(a, b, b"again")
    assert a.e2e.actions[0].payload[0] == sw.Kind.SESSION_APP  # type: ignore[union-attr]
    send(b, a, b"reply")
    out = run([a, b])
    assert delivered(out, b) == [b"again"] and delivered(out, a) == [b"reply"]


def test_without_key_package_the_message_waits_then_expires(ab: tuple[Peer, Peer]) -> None:
    a, b = ab
    mid = send(a, b, b"later")
    kinds_sent = [x.payload[0] for x in a.e2e.actions if isinstance(x, SendPayload)]
    assert kinds_sent == [sw.Kind.KP_REQUEST]
    a.e2e.actions.clear()
    a.e2e.tick(now=T0 + 10)  # asked recently: not again
    assert not a.e2e.actions
    a.e2e.tick(now=T0 + 3599)  # still waiting: ask again (the request may have been lost)
    assert [x.payload[0] for x in a.e2e.actions] == [sw.Kind.KP_REQUEST]  # type: ignore[union-attr]
    a.e2e.actions.clear()
    a.e2e.tick(now=T0 + 3601)
    assert list(a.e2e.actions) == [Expired(mid, "no key package for the peer in time")]


def test_waiting_messages_ask_again_after_a_restart(ab: tuple[Peer, Peer]) -> None:
    a, b = ab
    send(a, b, b"lost request")
    a.e2e.actions.clear()  # the KP_REQUEST died with the process
    a.restart()
    a.e2e.tick(now=T0 + 1)
    assert delivered(run([a, b], now=T0 + 1), b) == [b"lost request"]


def test_key_package_request_round_trip_flushes_waiting_messages(ab: tuple[Peer, Peer]) -> None:
    a, b = ab
    send(a, b, b"one")
    send(a, b, b"two")
    out = run([a, b])  # KP_REQUEST -> KP_RESPONSE -> INIT x2 -> CONN_ACCEPT
    assert delivered(out, b) == [b"one", b"two"]


def test_both_ends_set_up_at_once_and_converge_on_the_lower_group(
    ab: tuple[Peer, Peer],
) -> None:
    a, b = ab
    publish(a, b)
    publish(b, a)
    send(a, b, b"from a")
    send(b, a, b"from b")
    out = run([a, b])
    assert delivered(out, b) == [b"from a"] and delivered(out, a) == [b"from b"]
    ga, gb = a.e2e.info(b.address).group_id, b.e2e.info(a.address).group_id
    assert ga == gb
    send(a, b, b"x")
    send(b, a, b"y")
    out = run([a, b])
    assert delivered(out, b) == [b"x"] and delivered(out, a) == [b"y"]


def test_restart_between_key_package_and_welcome_resets_and_delivers_once(
    ab: tuple[Peer, Peer],
) -> None:
    a, b = ab
    publish(b, a)
    b.restart()  # the published key package's private key died with that run
    send(a, b, b"survives")
    out = run([a, b])
    assert len(notices(out, "session_reset_sent")) == 1
    assert delivered(out, b) == [b"survives"]
    send(a, b, b"after")
    assert delivered(run([a, b]), b) == [b"after"]


def test_one_key_package_used_by_two_senders(tmp_path: Path) -> None:
    a, b, c = (make_peer(tmp_path, n) for n in "abc")
    ext = b.e2e.publish(now=T0)
    assert ext is not None
    a.e2e.learn_extensions(b.address, ext, now=T0)
    c.e2e.learn_extensions(b.address, ext, now=T0)
    send(a, b, b"from a")
    send(c, b, b"from c")
    out = run([a, b, c])
    assert sorted(delivered(out, b)) == [b"from a", b"from c"]
    assert b.e2e.published is None  # used by the first join: the node publishes anew
    fresh = b.e2e.publish(now=T0)
    assert fresh is not None and fresh != ext


def test_changed_key_of_a_pinned_peer_is_refused(ab: tuple[Peer, Peer]) -> None:
    a, b = ab
    pub = b.identity.public
    a.pins[b.address] = tofu.Contact(b.address, pub.signing_key, pub.exchange_key, T0, T0,
                                     pending_exchange_key=os.urandom(32))  # fmt: skip
    publish(b, a)
    out = run([a, b])
    assert notices(out, "key_package_refused")
    assert not a.e2e.has_kp(b.address)
    # Trusted (pin updated): the same kind of key package is accepted.
    a.pins[b.address] = replace(a.pins[b.address], pending_exchange_key=None)
    publish(b, a, now=T0 + 2 * 24 * 3600)
    assert a.e2e.has_kp(b.address)


def test_key_package_of_another_node_is_refused(tmp_path: Path) -> None:
    a, b, c = (make_peer(tmp_path, n) for n in "abc")
    ext = c.e2e.publish(now=T0)
    assert ext is not None
    a.e2e.learn_extensions(b.address, ext, now=T0)  # C's key package claimed for B
    assert not a.e2e.has_kp(b.address)
    assert notices(run([a]), "key_package_refused")


def test_tampered_and_replayed_ciphertexts_are_refused_and_later_ones_open(
    ab: tuple[Peer, Peer],
) -> None:
    a, b = ab
    publish(b, a)
    send(a, b, b"setup")
    run([a, b])
    send(a, b, b"genuine")
    action = a.e2e.actions.popleft()
    assert isinstance(action, SendPayload)
    bad = bytearray(action.payload)
    bad[-2] ^= 1
    b.e2e.receive(a.address, bytes(bad), hops=1, now=T0)
    b.e2e.receive(a.address, action.payload, hops=1, now=T0)
    b.e2e.receive(a.address, action.payload, hops=1, now=T0)  # replay
    out = run([a, b])
    assert delivered(out, b) == [b"genuine"]
    assert len(notices(out, "message_undecryptable")) == 2
    b.e2e.receive(a.address, b"\x10", hops=1, now=T0)  # malformed: no crash
    assert notices(run([b]), "message_undecryptable")


def test_stranger_under_contacts_policy_becomes_a_request(tmp_path: Path) -> None:
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    publish(b, a)
    send(a, b, b"hi there")
    send(a, b, b"second")
    out = run([a, b])
    assert delivered(out, b) == []
    assert [r.messages for r in b.e2e.requests("incoming")] == [2]
    assert notices(out, "connection_request")
    b.e2e.accept(a.address, now=T0 + 5)
    out = run([a, b], now=T0 + 5)
    assert delivered(out, b) == [b"hi there", b"second"]
    assert a.e2e.info(b.address).established
    send(a, b, b"now direct")
    assert delivered(run([a, b]), b) == [b"now direct"]


def test_explicit_request_rejected_then_cancelled_then_expired(tmp_path: Path) -> None:
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    publish(b, a)
    a.e2e.connect(b.address, "chat", now=T0)
    run([a, b])
    assert len(b.e2e.requests("incoming")) == 1 and len(a.e2e.requests("outgoing")) == 1
    b.e2e.reject(b_addr := a.address, now=T0)
    out = run([a, b])
    assert notices(out, "connection_rejected") and a.e2e.requests() == []
    assert b_addr not in {r.peer for r in b.e2e.requests()}
    # Again (B's key package is fetched with KP_REQUEST now), then cancel.
    a.e2e.connect(b.address, "chat", now=T0 + 1)
    run([a, b], now=T0 + 1)
    a.e2e.cancel(b.address, now=T0 + 2)
    out = run([a, b], now=T0 + 2)
    assert b.e2e.requests() == [] and notices(out, "connection_cancelled")
    # Again, then both sides expire it.
    a.e2e.connect(b.address, "chat", now=T0 + 3)
    run([a, b], now=T0 + 3)
    later = T0 + 8 * 24 * 3600
    a.e2e.tick(now=later)
    b.e2e.tick(now=later)
    out = run([a, b], now=later)
    assert a.e2e.requests() == [] and b.e2e.requests() == []
    assert len(notices(out, "connection_expired")) == 2


def test_incoming_request_list_is_bounded(tmp_path: Path) -> None:
    from meshd.e2e import requests as rq

    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    old = rq.MAX_INCOMING_REQUESTS
    rq.MAX_INCOMING_REQUESTS = 2
    try:
        senders = [make_peer(tmp_path, f"s{i}") for i in range(3)]
        for s in senders:
            send(s, b, b"hello")  # B's key package comes by KP_REQUEST
        out = run([b, *senders])
        assert len(b.e2e.requests("incoming")) == 2
        # B says so in its log; the third sender is told (CONN_REJECT busy).
        details = sorted(n.detail for n in notices(out, "connection_rejected"))
        assert details == ["busy", "incoming request list full"]
    finally:
        rq.MAX_INCOMING_REQUESTS = old


def test_sessions_survive_a_restart(ab: tuple[Peer, Peer]) -> None:
    a, b = ab
    publish(b, a)
    send(a, b, b"before")
    run([a, b])
    a.restart()
    b.restart()
    send(a, b, b"after restart")
    send(b, a, b"and back")
    out = run([a, b])
    assert delivered(out, b) == [b"after restart"] and delivered(out, a) == [b"and back"]


def test_request_whose_key_package_died_is_rebuilt_after_accept(tmp_path: Path) -> None:
    """B restarts between publishing and accepting: accepting answers the held Welcome
    with SESSION_RESET, A rebuilds the request, and the session comes up."""
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    publish(b, a)
    a.e2e.connect(b.address, "chat", now=T0)
    run([a, b])
    b.restart()
    b.e2e.accept(a.address, now=T0 + 1)
    out = run([a, b], now=T0 + 1)
    assert notices(out, "session_reset_sent")
    assert a.e2e.info(b.address).established and a.e2e.requests() == []
    assert notices(out, "connection_accepted")
    send(a, b, b"finally")
    assert delivered(run([a, b]), b) == [b"finally"]


def test_connect_to_a_peer_that_asked_first_says_accept_instead(tmp_path: Path) -> None:
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    send(a, b, b"hi")
    run([a, b])
    with pytest.raises(FailedPrecondition, match="requests accept"):
        b.e2e.connect(a.address, "chat", now=T0)


def test_messages_waiting_for_key_packages_are_bounded(
    ab: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshd.e2e import sessions

    a, b = ab
    monkeypatch.setattr(sessions, "MAX_PENDING", 2)
    send(a, b, b"1")
    send(a, b, b"2")
    with pytest.raises(ResourceExhausted):
        send(a, b, b"3")


def test_request_with_a_first_message_sends_one_init(tmp_path: Path) -> None:
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    publish(b, a)
    mid = os.urandom(8)
    a.store.add_outgoing(message_id=mid, app_id="chat", dst=b.address, content=b"hi",
                         created_at=T0, expires_at=T0 + 60)  # fmt: skip
    payload = a.e2e.connect(b.address, "chat", now=T0,
                            first=(mid, Envelope("chat", b"hi"), T0 + 60))  # fmt: skip
    assert payload is not None
    frame = sw.decode(payload)
    assert isinstance(frame, sw.SessionInit) and frame.flags == sw.InitFlags.REQUEST
    assert not [x for x in a.e2e.actions if isinstance(x, SendPayload)]  # no bare request
    a.e2e.actions.append(SendPayload(b.address, payload, mid))
    run([a, b])
    assert [r.messages for r in b.e2e.requests("incoming")] == [1]


def test_published_key_package_used_elsewhere_is_rotated(ab: tuple[Peer, Peer]) -> None:
    """The group layer joined a group with B's published key package: B publishes anew."""
    a, b = ab
    ext = b.e2e.publish(now=T0)
    assert ext is not None and b.e2e.publish(now=T0 + 1) is None
    kp = sw.decode_extensions(ext)[sw.EXT_KEY_PACKAGE]
    gid = a.engine.create_group()
    welcome = a.engine.add_members(gid, [kp], now=T0).welcome
    assert welcome is not None
    b.engine.join_group(welcome, now=T0)
    fresh = b.e2e.publish(now=T0 + 2)
    assert fresh is not None and fresh != ext


def test_sealed_carriers_are_kept_while_in_the_outbox_then_pruned(
    ab: tuple[Peer, Peer],
) -> None:
    from meshd.router.events import DeliveryState

    a, b = ab
    publish(b, a)
    mid = send(a, b, b"kept")
    tables = a.e2e.tables
    a.e2e.tick(now=T0 + 2 * 3600)
    assert tables.sealed(mid) is not None  # still in the outbox: restored after a restart
    a.store.set_outgoing_state(mid, DeliveryState.DELIVERED, None, at=T0 + 1)
    a.e2e.tick(now=T0 + 2 * 3600)
    assert tables.sealed(mid) is None
