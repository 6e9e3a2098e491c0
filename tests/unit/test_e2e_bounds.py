"""Key packages held in mls-rs memory are bounded (meshd/e2e/sessions.py
MAX_KEY_PACKAGES_IN_MEMORY, MlsRsEngine.drop_key_packages)."""

from __future__ import annotations

from pathlib import Path

from meshd.e2e import session_wire as sw
from meshd.e2e.sessions import SendPayload
from tests.unit.test_e2e_sessions import T0, delivered, make_peer, notices, publish, run, send


def test_key_packages_in_memory_stay_bounded_and_sessions_survive_the_drop(
    tmp_path: Path,
) -> None:
    a, b = make_peer(tmp_path, "a"), make_peer(tmp_path, "b")
    publish(a, b)
    send(b, a, b"before")
    assert delivered(run([a, b]), a) == [b"before"]
    a.e2e.max_key_packages = 5
    now = T0
    # c gets a key package of a now and uses it only after a dropped them all.
    c = make_peer(tmp_path, "c")
    c.e2e.request_kp(a.address, now=now, force=True)
    run([a, c], now=now)
    assert c.e2e.has_kp(a.address)
    dropped = 0
    for _ in range(12):  # one fresh key package a minute (the per-peer burst is 8/min)
        now += 61
        b.e2e.request_kp(a.address, now=now, force=True)
        out = run([a, b], now=now)
        dropped += len(notices(out, "key_packages_dropped"))
        assert a.engine.key_packages_in_memory <= a.e2e.max_key_packages
    assert dropped >= 2
    # The sessions' groups were reloaded through the new client: they keep working.
    send(a, b, b"after a")
    send(b, a, b"after b")
    out = run([a, b], now=now)
    assert delivered(out, b) == [b"after a"] and delivered(out, a) == [b"after b"]
    # A key package from before the drop is dead: its Welcome is answered with a
    # SESSION_RESET carrying a fresh one, and the message still arrives once.
    send(c, a, b"with a dead key package", now=now)
    first = c.e2e.actions[0]
    assert isinstance(first, SendPayload) and first.payload[0] == sw.Kind.SESSION_INIT
    out = run([a, c], now=now)
    assert len(notices(out, "session_reset_sent")) == 1
    assert delivered(out, a) == [b"with a dead key package"]
    # The published key package died with the drop: it is republished.
    assert a.e2e.published is None or a.engine.key_package_used(a.e2e.published.ref)
    assert a.e2e.publish(now=now) is not None
