"""1:1 session self-updates and signed control payloads, back to back: real MLS engines,
real stores, a manual clock (meshd/e2e/session_updates.py, session_wire signatures)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from pathlib import Path

import pytest

from meshd.address import NodeAddress
from meshd.config import load_config
from meshd.crypto.identity import Identity
from meshd.e2e import session_wire as sw
from meshd.e2e.coalesce import Queued, seal_batch
from meshd.e2e.requests import AcceptFrom
from meshd.e2e.sessions import Deliver, Notice, SendPayload
from meshd.envelope import Envelope
from meshd.errors import ConfigError, FailedPrecondition
from tests.unit.test_e2e_sessions import (
    T0,
    Peer,
    delivered,
    make_peer,
    notices,
    publish,
    run,
    send,
)

DAY = 24 * 3600.0


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Peer, Peer]:
    """Two peers with an established session (epoch 1 after the Add)."""
    a, b = make_peer(tmp_path, "a"), make_peer(tmp_path, "b")
    publish(b, a)
    send(a, b, b"hello")
    assert delivered(run([a, b]), b) == [b"hello"]
    return a, b


def epochs(a: Peer, b: Peer) -> tuple[int, int]:
    ga, gb = a.e2e.info(b.address).group_id, b.e2e.info(a.address).group_id
    assert ga == gb
    return a.engine.epoch(ga), b.engine.epoch(gb)


def sends(p: Peer) -> list[SendPayload]:
    """Take ``p``'s queued payloads (the other actions stay)."""
    out = [x for x in p.e2e.actions if isinstance(x, SendPayload)]
    rest = [x for x in p.e2e.actions if not isinstance(x, SendPayload)]
    p.e2e.actions.clear()
    p.e2e.actions.extend(rest)
    return out


def carry(src: Peer, dst: Peer, payloads: list[SendPayload], now: float) -> None:
    for x in payloads:
        dst.e2e.receive(src.address, x.payload, hops=1, now=now)


def test_each_end_updates_on_its_interval_and_both_keep_talking(
    pair: tuple[Peer, Peer],
) -> None:
    a, b = pair
    assert epochs(a, b) == (1, 1)
    due_a = a.e2e.update_due(b.address)
    due_b = b.e2e.update_due(a.address)
    assert due_a is not None and due_b is not None
    # Daily, stretched by < 10 % per end (a hash of the end and the group).
    assert T0 + DAY <= due_a < T0 + 1.1 * DAY and T0 + DAY <= due_b < T0 + 1.1 * DAY
    a.e2e.tick(now=T0 + DAY - 1)
    assert not sends(a)
    a.e2e.tick(now=due_a)
    bare = sends(a)
    assert [x.payload[0] for x in bare] == [sw.Kind.SESSION_COMMIT]
    assert a.e2e.update_due(b.address) is None  # not again until confirmed
    carry(a, b, bare, due_a)
    run([a, b], now=due_a)  # b's proof confirms a's commit
    assert epochs(a, b) == (2, 2)
    assert a.e2e.pending_commit(a.e2e.info(b.address).group_id) is None
    send(a, b, b"after a's update", now=due_a)
    assert sends(a)[0].payload[0] == sw.Kind.SESSION_APP  # the commit no longer rides along
    b.e2e.tick(now=due_b)
    out = run([a, b], now=due_b)
    assert epochs(a, b) == (3, 3)
    assert len(notices(out, "session_updated")) == 1
    send(a, b, b"x", now=due_b)
    send(b, a, b"y", now=due_b)
    out = run([a, b], now=due_b)
    assert delivered(out, b) == [b"x"] and delivered(out, a) == [b"y"]


def test_messages_sealed_before_an_update_open_after_it(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    send(a, b, b"old epoch from a", now=T0 + 10)
    send(b, a, b"old epoch from b", now=T0 + 10)
    late_a, late_b = sends(a), sends(b)
    a.e2e.update(b.address, now=T0 + 20)
    carry(a, b, sends(a), T0 + 20)  # b applies the commit first
    run([a, b], now=T0 + 20)
    assert epochs(a, b) == (2, 2)
    carry(a, b, late_a, T0 + 30)
    carry(b, a, late_b, T0 + 30)
    out = run([a, b], now=T0 + 30)
    assert delivered(out, b) == [b"old epoch from a"]
    assert delivered(out, a) == [b"old epoch from b"]
    assert not notices(out, "message_undecryptable")


def test_a_lost_commit_rides_along_until_the_peer_proves_it_applied_it(
    pair: tuple[Peer, Peer],
) -> None:
    a, b = pair
    a.e2e.update(b.address, now=T0 + 10)
    sends(a)  # the bare commit is lost
    send(a, b, b"first in epoch 2", now=T0 + 11)
    (frame,) = sends(a)
    assert frame.payload[0] == sw.Kind.SESSION_COMMIT
    carry(a, b, [frame], T0 + 12)
    assert delivered(list((b.address, x) for x in b.e2e.actions), b) == [b"first in epoch 2"]
    sends(b)  # b's proof is lost too: a keeps attaching its commit
    send(a, b, b"second", now=T0 + 13)
    (frame,) = sends(a)
    assert frame.payload[0] == sw.Kind.SESSION_COMMIT
    b.e2e.actions.clear()
    carry(a, b, [frame], T0 + 14)  # the commit again is harmless
    assert [x.content for x in b.e2e.actions if isinstance(x, Deliver)] == [b"second"]
    sends(b)
    send(b, a, b"reply", now=T0 + 15)  # any message of b in epoch 2 confirms
    assert delivered(run([a, b], now=T0 + 15), a) == [b"reply"]
    send(a, b, b"third", now=T0 + 16)
    assert sends(a)[0].payload[0] == sw.Kind.SESSION_APP


def test_both_ends_update_at_once_and_converge_on_the_lower_commit(
    pair: tuple[Peer, Peer],
) -> None:
    a, b = pair
    now = T0 + 100
    a.e2e.update(b.address, now=now)
    b.e2e.update(a.address, now=now)
    gid = a.e2e.info(b.address).group_id
    commit_a, commit_b = a.e2e.pending_commit(gid), b.e2e.pending_commit(gid)
    assert commit_a is not None and commit_b is not None
    a_wins = hashlib.sha256(commit_a).digest() < hashlib.sha256(commit_b).digest()
    winner, loser = (a, b) if a_wins else (b, a)
    # Each also sends a message on its own branch before hearing of the other's commit.
    send(a, b, b"a on its branch", now=now + 1)
    send(b, a, b"b on its branch", now=now + 1)
    out = run([a, b], now=now + 2)
    assert len(notices(out, "session_fork_resolved")) == 1
    assert [n for who, n in out if isinstance(n, Notice) and n.kind == "session_fork_resolved"
            and who == loser.address]  # fmt: skip
    assert epochs(a, b) == (2, 2)
    assert winner.e2e.pending_commit(gid) is None and loser.e2e.pending_commit(gid) is None
    # Every message arrives; the loser's branch copy is dropped quietly and re-sealed.
    assert set(delivered(out, b)) == {b"a on its branch"}
    assert set(delivered(out, a)) == {b"b on its branch"}
    assert not notices(out, "message_undecryptable")
    # The loser's leaf was not refreshed: it updates again at its next tick.
    loser.e2e.tick(now=now + 5)
    out = run([a, b], now=now + 5)
    assert epochs(a, b) == (3, 3)
    send(a, b, b"x", now=now + 6)
    send(b, a, b"y", now=now + 6)
    out = run([a, b], now=now + 6)
    assert delivered(out, b) == [b"x"] and delivered(out, a) == [b"y"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_reordering_link_with_updates_from_both_ends_converges(
    pair: tuple[Peer, Peer], seed: int
) -> None:
    """Frames are lost (the core retransmits them later: delivered late and out of order;
    it drops duplicates itself) while both ends update and talk; every message arrives,
    nothing is reported undecryptable and both ends end in one epoch."""
    a, b = pair
    rng = random.Random(seed)
    peers = {a.address: a, b.address: b}
    late: list[tuple[NodeAddress, SendPayload]] = []
    got: dict[NodeAddress, set[bytes]] = {a.address: set(), b.address: set()}
    sent: dict[NodeAddress, set[bytes]] = {a.address: set(), b.address: set()}
    seen_notices: list[str] = []
    now = T0 + 10

    def pump(loss: float = 0.35) -> None:
        busy = True
        while busy:
            busy = False
            for p in (a, b):
                while p.e2e.actions:
                    busy = True
                    x = p.e2e.actions.popleft()
                    if isinstance(x, Deliver):
                        got[p.address].add(x.content)
                    elif isinstance(x, Notice):
                        seen_notices.append(x.kind)
                    elif isinstance(x, SendPayload):
                        if rng.random() < loss:
                            late.append((p.address, x))  # lost now, retransmitted later
                            continue
                        peers[x.dst].e2e.receive(p.address, x.payload, hops=1, now=now)

    for step in range(40):
        now += 7
        who, other = (a, b) if rng.random() < 0.5 else (b, a)
        choice = rng.random()
        if choice < 0.2:  # one end updates, or both at once (a fork)
            for p, q in ((who, other), (other, who)) if choice < 0.1 else ((who, other),):
                with contextlib.suppress(FailedPrecondition):  # last one not confirmed yet
                    p.e2e.update(q.address, now=now)
        elif choice < 0.8:
            text = f"m{step}".encode()
            send(who, other, text, now=now)
            sent[other.address].add(text)
        elif late:
            rng.shuffle(late)
            src, x = late.pop()
            peers[x.dst].e2e.receive(src, x.payload, hops=1, now=now)
        pump()
    # The link heals: what was lost is retransmitted until nothing is outstanding.
    while late:
        now += 1
        src, x = late.pop(0)
        peers[x.dst].e2e.receive(src, x.payload, hops=1, now=now)
        pump(loss=0.0)
    assert got == sent
    assert "message_undecryptable" not in seen_notices
    assert "session_fork_resolved" in seen_notices  # both ends did update at once
    ea, eb = epochs(a, b)
    assert ea == eb > 1
    send(a, b, b"final a", now=now + 1)
    send(b, a, b"final b", now=now + 1)
    out = run([a, b], now=now + 1)
    assert delivered(out, b) == [b"final a"] and delivered(out, a) == [b"final b"]


def test_no_update_before_the_peer_joined(tmp_path: Path) -> None:
    a, b = make_peer(tmp_path, "a"), make_peer(tmp_path, "b")
    publish(b, a)
    send(a, b, b"hello")  # the INIT is not delivered yet
    assert a.e2e.update_due(b.address) is None
    with pytest.raises(FailedPrecondition):
        a.e2e.update(b.address, now=T0 + 1)


def test_an_unconfirmed_update_survives_a_restart(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    a.e2e.update(b.address, now=T0 + 10)
    sends(a)  # lost
    gid = a.e2e.info(b.address).group_id
    a.restart()
    assert a.e2e.pending_commit(gid) is not None
    send(a, b, b"after restart", now=T0 + 20)
    assert delivered(run([a, b], now=T0 + 20), b) == [b"after restart"]
    assert epochs(a, b) == (2, 2)
    assert a.e2e.pending_commit(gid) is None


def test_interval_zero_never_updates_and_config_reads_the_interval(
    pair: tuple[Peer, Peer],
) -> None:
    a, b = pair
    a.e2e.update_interval = 0
    assert a.e2e.update_due(b.address) is None
    a.e2e.tick(now=T0 + 400 * DAY)
    assert epochs(a, b) == (1, 1)
    cfg = load_config(["--state-dir", "/tmp/x", "--session-update-interval", "3600"], env={})
    assert cfg.session_update_interval_s == 3600.0
    with pytest.raises(ConfigError) as err:
        load_config(["--state-dir", "/tmp/x", "--session-update-interval", "soon"], env={})
    assert err.value.field == "session_update_interval"


# --- signed control payloads: a forging node -------------------------------------------


def test_forged_cancel_reject_reset_and_key_package_response_are_refused(
    tmp_path: Path,
) -> None:
    a = make_peer(tmp_path, "a")
    b = make_peer(tmp_path, "b", AcceptFrom.CONTACTS)
    mallory = Identity.generate()
    publish(b, a)
    publish(a, b)
    a.e2e.connect(b.address, "chat", now=T0)
    run([a, b])
    assert [r.peer for r in b.e2e.requests("incoming")] == [a.address]
    gid = a.e2e.info(b.address).group_id
    # Mallory (a relay on the path) makes frames that claim to come from a.
    forgeries = [
        sw.sign_control(sw.ConnCancel(gid), mallory, b.address),
        sw.ConnCancel(gid).body() + a.identity.public.signing_key + bytes(64),
    ]
    for payload in forgeries:
        b.e2e.receive(a.address, payload, hops=2, now=T0 + 1)
    out = run([a, b], now=T0 + 1)
    assert len(notices(out, "control_forged")) == 2
    assert [r.peer for r in b.e2e.requests("incoming")] == [a.address]  # still pending
    # b's genuine CONN_REJECT to a, redirected by mallory to another node: refused there.
    c = make_peer(tmp_path, "c")
    reject = b.e2e.signed(a.address, sw.ConnReject(sw.RejectReason.DECLINED, gid))
    c.e2e.receive(b.address, reject, hops=2, now=T0 + 2)
    assert notices(run([c], now=T0 + 2), "control_forged")
    # A forged reject / reset to a (the requester) changes nothing.
    forged_reject = sw.sign_control(sw.ConnReject(sw.RejectReason.DECLINED, gid), mallory,
                                    a.address)  # fmt: skip
    kp = b.e2e._fresh_kp(a.address, now=T0)
    forged_reset = sw.sign_control(sw.SessionReset(sw.ResetReason.UNKNOWN_GROUP, gid, kp),
                                   mallory, a.address)  # fmt: skip
    a.e2e.receive(b.address, forged_reject, hops=2, now=T0 + 3)
    a.e2e.receive(b.address, forged_reset, hops=2, now=T0 + 3)
    out = run([a, b], now=T0 + 3)
    assert len(notices(out, "control_forged")) == 2
    assert a.e2e.info(b.address).group_id == gid
    assert [r.peer for r in a.e2e.requests("outgoing")] == [b.address]
    # A genuine KP_RESPONSE that answers no request of a's is refused as well.
    unsolicited = b.e2e.signed(a.address, sw.KpResponse(bytes(8), kp))
    a.e2e.receive(b.address, unsolicited, hops=1, now=T0 + 4)
    assert notices(run([a, b], now=T0 + 4), "key_package_refused")
    # The genuine cancel still works.
    a.e2e.cancel(b.address, now=T0 + 5)
    out = run([a, b], now=T0 + 5)
    assert not notices(out, "control_forged")
    assert b.e2e.requests("incoming") == []


def test_forged_key_package_request_gets_no_answer(tmp_path: Path) -> None:
    a, b = make_peer(tmp_path, "a"), make_peer(tmp_path, "b")
    mallory = Identity.generate()
    forged = sw.sign_control(sw.KpRequest(bytes(8)), mallory, b.address)
    b.e2e.receive(a.address, forged, hops=2, now=T0)
    assert not any(isinstance(x, SendPayload) for x in b.e2e.actions)
    assert notices(run([a, b]), "control_forged")


def test_a_coalesced_carrier_on_the_losing_branch_is_resealed_member_by_member(
    pair: tuple[Peer, Peer],
) -> None:
    a, b = pair
    now = T0 + 100
    a.e2e.update(b.address, now=now)
    b.e2e.update(a.address, now=now)
    gid = a.e2e.info(b.address).group_id
    ca, cb = a.e2e.pending_commit(gid), b.e2e.pending_commit(gid)
    assert ca is not None and cb is not None
    loser, winner = (b, a) if hashlib.sha256(ca).digest() < hashlib.sha256(cb).digest() else (a, b)
    items = []
    for text in (b"one", b"two", b"three"):
        mid = os.urandom(8)
        loser.store.add_outgoing(message_id=mid, app_id="chat", dst=winner.address, content=text,
                                 created_at=now + 1, expires_at=now + 3600)  # fmt: skip
        items.append(Queued(mid, Envelope("chat", text), now + 3600))
    s = loser.e2e.session(winner.address)
    assert s is not None
    payload, _ = seal_batch(loser.e2e, s, items, now=now + 1)
    loser.e2e.actions.append(SendPayload(winner.address, payload, items[0].message_id))
    out = run([a, b], now=now + 2)
    assert len(notices(out, "session_fork_resolved")) == 1
    assert sorted(delivered(out, winner)) == [b"one", b"three", b"two"]
