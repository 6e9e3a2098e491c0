"""What the sender's app is told about a message a contacts-only peer holds unopened:
CONN_HELD -> awaiting_acceptance, DELIVERED deferred until the peer joins (Opened), failed
on reject/cancel (meshd/e2e/requests.py)."""

from __future__ import annotations

from pathlib import Path

from meshd.crypto.identity import Identity
from meshd.e2e import session_wire as sw
from meshd.e2e.requests import REQUEST_LIFETIME_S, AcceptFrom
from meshd.e2e.sessions import Expired, Notice, Opened, SendPayload
from tests.unit.test_e2e_sessions import (
    T0,
    Out,
    Peer,
    delivered,
    make_peer,
    notices,
    publish,
    run,
    send,
)


def opened(out: Out) -> set[bytes]:
    return {m for _, a in out if isinstance(a, Opened) for m in a.message_ids}


def core_acknowledged(src: Peer, dst: Peer, mid: bytes) -> None:
    """What the node does with the core's DELIVERED for ``mid`` (node_sessions.py)."""
    if src.e2e.unopened(dst.address):
        src.e2e.defer_delivered(dst.address, [mid])


def setup(tmp_path: Path, accept: AcceptFrom) -> tuple[Peer, Peer]:
    a, b = make_peer(tmp_path, "a"), make_peer(tmp_path, "b", accept)
    publish(b, a)
    return a, b


def test_held_message_awaits_acceptance_then_is_delivered_when_accepted(
    tmp_path: Path,
) -> None:
    a, b = setup(tmp_path, AcceptFrom.CONTACTS)
    first = send(a, b, b"hi, it's a")
    out = run([a, b])
    core_acknowledged(a, b, first)
    waiting = notices(out, "awaiting_acceptance")
    assert [(n.detail, n.app_id, n.peer) for n in waiting] == [(first.hex(), "chat", b.address)]
    assert delivered(out, b) == [] and not opened(out)
    # Later messages in the held session are reported at once.
    second = send(a, b, b"still there?", now=T0 + 1)
    assert [n.detail for n in a.e2e.actions if isinstance(n, Notice)
            and n.kind == "awaiting_acceptance"] == [second.hex()]  # fmt: skip
    out = run([a, b], now=T0 + 1)
    core_acknowledged(a, b, second)
    assert not opened(out)
    # The deferral survives a restart of the sender.
    a.restart()
    b.e2e.accept(a.address, now=T0 + 2)
    out = run([a, b], now=T0 + 2)
    assert delivered(out, b) == [b"hi, it's a", b"still there?"]
    assert opened(out) == {first, second}
    send(a, b, b"now established", now=T0 + 3)
    out = run([a, b], now=T0 + 3)
    assert not notices(out, "awaiting_acceptance") and not opened(out)


def test_rejected_request_fails_the_messages_its_node_acknowledged(tmp_path: Path) -> None:
    a, b = setup(tmp_path, AcceptFrom.CONTACTS)
    mid = send(a, b, b"hello?")
    run([a, b])
    core_acknowledged(a, b, mid)
    b.e2e.reject(a.address, now=T0 + 1)
    out = run([a, b], now=T0 + 1)
    assert (a.address, Expired(mid, "connection request rejected")) in out
    assert not opened(out)


def test_unanswered_request_fails_its_messages_when_it_expires(tmp_path: Path) -> None:
    a, b = setup(tmp_path, AcceptFrom.CONTACTS)
    env_mid = send(a, b, b"anyone there?")
    run([a, b])
    core_acknowledged(a, b, env_mid)
    a.e2e.connect(b.address, "chat", now=T0 + 1)  # an explicit request too
    a.e2e.actions.clear()
    a.e2e.tick(now=T0 + REQUEST_LIFETIME_S + 2)  # b's side never answered (offline)
    assert Expired(env_mid, "connection request expired") in a.e2e.actions


def test_open_policy_delivers_once_the_peer_proves_it_joined(tmp_path: Path) -> None:
    a, b = setup(tmp_path, AcceptFrom.ANYONE)
    mid = send(a, b, b"hello")
    (init,) = [x for x in a.e2e.actions if isinstance(x, SendPayload)]
    a.e2e.actions.clear()
    core_acknowledged(a, b, mid)  # the core's ACK overtook b's proof of joining
    b.e2e.receive(a.address, init.payload, hops=1, now=T0)
    out = run([a, b])
    assert opened(out) == {mid}
    assert not notices(out, "awaiting_acceptance")


def test_forged_conn_held_is_refused(tmp_path: Path) -> None:
    a, b = setup(tmp_path, AcceptFrom.ANYONE)
    send(a, b, b"hello")
    a.e2e.actions.clear()
    gid = a.e2e.info(b.address).group_id
    forged = sw.sign_control(sw.ConnHeld(gid), Identity.generate(), a.address)
    a.e2e.receive(b.address, forged, hops=2, now=T0)
    out = run([a])
    assert notices(out, "control_forged") and not notices(out, "awaiting_acceptance")
