"""Group layer scenarios on real MLS engines over a lossy, reordering test mesh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.e2e.group_wire import Action, GroupCommit, GroupData, Role
from meshd.e2e.groups import GroupManager
from meshd.e2e.groups_events import (
    EpochAdvanced,
    ForkResolved,
    GroupConfig,
    GroupJoined,
    GroupLeft,
    GroupMessage,
    GroupRemoved,
    KeyPackageNeeded,
    MemberAdded,
    MemberRemoved,
    PayloadRefused,
    RoleChanged,
)
from meshd.e2e.groups_state import GroupState
from meshd.errors import FailedPrecondition, MeshdError, PermissionDenied
from tests.unit.test_groups_net import Net


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path, seed=7)
    yield n
    n.close()


def five(net: Net) -> bytes:
    for name in "abcde":
        net.add(name)
    return net.group("a", "bcde")


def refusals(net: Net, name: str) -> list[str]:
    return [e.reason for e in net.peers[name].events if isinstance(e, PayloadRefused)]


def test_five_members_one_ciphertext_fanned_out(net: Net) -> None:
    gid = five(net)
    assert all(any(isinstance(e, GroupJoined) for e in net.peers[n].events) for n in "bcde")
    mid, output = net.peers["c"].mgr.send(gid, "chat", b"hi all", now=net.now)
    payloads = {p for _, p in output.sends}
    assert len(output.sends) == 4 and len(payloads) == 1  # ONE ciphertext, four unicasts
    assert {d for d, _ in output.sends} == {net.peers[n].address for n in "abde"}
    net.out(net.peers["c"], output)
    net.run(3.0)
    for n in "abde":
        assert net.peers[n].messages(gid) == [("chat", b"hi all")]
        got = [
            e for e in net.peers[n].events if isinstance(e, GroupMessage) and e.message_id == mid
        ]
        assert got and got[0].sender == net.peers["c"].address
    assert len(net.tips(gid, "abcde")) == 1 and len(net.secrets(gid, "abcde")) == 1


def test_offline_member_catches_up_on_two_commits_and_reads_next(net: Net) -> None:
    gid = five(net)
    net.offline.add("e")
    a = net.peers["a"]
    net.out(a, a.mgr.remove(gid, [net.peers["d"].address], now=net.now))
    net.run(2.0)
    net.out(a, a.mgr.set_role(gid, net.peers["b"].address, Role.ADMIN, now=net.now))
    net.run(2.0)
    assert net.peers["e"].mgr.state(gid).epoch == net.peers["a"].mgr.state(gid).epoch - 2
    net.offline.discard("e")
    net.send("b", gid, b"after the commits")
    net.run(6.0)
    e = net.peers["e"]
    assert e.texts(gid) == [b"after the commits"]
    assert len(net.tips(gid, "abce")) == 1
    assert e.mgr.state(gid).view.roles[net.peers["b"].address] is Role.ADMIN
    assert net.peers["d"].address not in e.mgr.state(gid).view.roles
    assert any(isinstance(x, MemberRemoved) for x in e.events)


def test_partition_two_admins_commit_at_once_then_converge(tmp_path: Path) -> None:
    for seed in (1, 2, 3):  # different commit ids: either side may win
        net = Net(tmp_path / str(seed), seed=seed)
        for name in "abcde":
            net.add(name)
        gid = net.group("a", "bcde")
        a, b = net.peers["a"], net.peers["b"]
        net.out(a, a.mgr.set_role(gid, b.address, Role.ADMIN, now=net.now))
        net.run(3.0)
        net.sides = [set("acd"), set("be")]
        net.out(a, a.mgr.set_role(gid, net.peers["c"].address, Role.ADMIN, now=net.now))
        net.out(b, b.mgr.remove(gid, [net.peers["e"].address], now=net.now))
        net.run(3.0)
        assert net.tips(gid, "acd") != net.tips(gid, "b")  # two branches
        net.sides = None
        for _ in range(6):  # members talk; mismatched tips trigger the chain exchange
            for name in "abcd":
                net.send(name, gid, b"ping from " + name.encode())
            net.run(4.0)
        survivors = "abcd"
        assert len(net.tips(gid, survivors)) == 1, net.tips(gid, survivors)
        assert len(net.secrets(gid, survivors)) == 1
        assert any(isinstance(e, ForkResolved) for n in survivors for e in net.peers[n].events)
        roles = net.peers["d"].mgr.state(gid).view.roles
        assert roles[net.peers["c"].address] is Role.ADMIN  # both changes survive
        assert net.peers["e"].address not in roles
        before = {n: len(net.peers[n].texts(gid)) for n in survivors}
        net.send("d", gid, b"converged")
        net.run(3.0)
        for n in "abc":
            assert net.peers[n].texts(gid)[before[n] :] == [b"converged"]
        net.close()


def test_member_cannot_add_remove_or_change_roles(net: Net) -> None:
    gid = five(net)
    c = net.peers["c"]
    with pytest.raises(PermissionDenied):
        c.mgr.invite(gid, [(net.kp("a"), Role.MEMBER)], now=net.now)
    with pytest.raises(PermissionDenied):
        c.mgr.remove(gid, [net.peers["b"].address], now=net.now)
    with pytest.raises(PermissionDenied):
        c.mgr.set_role(gid, c.address, Role.ADMIN, now=net.now)


def _forge(net: Net, gid: bytes, action: Action, claim_key: bytes | None = None) -> None:
    """Member c commits a removal of d with its own engine and ships it as ``action``."""
    c, d = net.peers["c"], net.peers["d"]
    st = c.mgr.state(gid)
    result = c.engine.remove_members(gid, [d.address])
    targets = ((d.address, Role.MEMBER),) if action is Action.REMOVE else ()
    env = GroupCommit(action, claim_key or c.mgr.key, st.tip, targets, result.commit)
    payload = env.signed(c.identity).encode()
    for n in "abde":
        net.out(net.peers[n], net.peers[n].mgr.receive(c.address, payload, now=net.now))
    c.engine.rollback(gid, st.epoch)  # c puts itself back to follow the real group


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (Action.REMOVE, "only admins"),
        (Action.UPDATE, "not the declared change"),
    ],
)
def test_forged_commit_by_a_member_is_refused(net: Net, action: Action, reason: str) -> None:
    gid = five(net)
    epoch = net.peers["a"].mgr.state(gid).epoch
    _forge(net, gid, action)
    for n in "abde":
        assert net.peers[n].mgr.state(gid).epoch == epoch
        assert any(reason in r for r in refusals(net, n)), refusals(net, n)
    net.send("a", gid, b"still one group")
    net.run(3.0)
    for n in "bcde":
        assert net.peers[n].texts(gid) == [b"still one group"]


def test_forged_commit_claiming_the_admin_key_is_refused(net: Net) -> None:
    gid = five(net)
    _forge(net, gid, Action.REMOVE, claim_key=net.peers["a"].mgr.key)
    for n in "bde":
        assert any("sender leaf" in r for r in refusals(net, n))


def test_forged_group_data_tip_does_not_break_reading(net: Net) -> None:
    gid = five(net)
    b = net.peers["b"]
    _, output = b.mgr.send(gid, "chat", b"x", now=net.now)
    data = GroupData.decode(output.sends[0][1])
    garbage = b"\x20" + bytes(8)  # a DATA with no MLS message
    out = net.peers["a"].mgr.receive(b.address, garbage, now=net.now)
    assert isinstance(out.events[0], PayloadRefused) and "mls" in out.events[0].reason
    out = net.peers["a"].mgr.receive(b.address, GroupData(data.tip, data.mls).encode(), now=net.now)
    assert [e.content for e in out.events if hasattr(e, "content")] == [b"x"]


def test_removed_member_cannot_read_later_messages(net: Net) -> None:
    gid = five(net)
    a, e = net.peers["a"], net.peers["e"]
    net.out(a, a.mgr.remove(gid, [e.address], now=net.now))
    net.run(3.0)
    assert any(isinstance(x, GroupRemoved) for x in e.events)
    with pytest.raises(MeshdError):
        e.mgr.state(gid)
    _, output = a.mgr.send(gid, "chat", b"secret", now=net.now)
    assert e.address not in {d for d, _ in output.sends}
    ciphertext = GroupData.decode(output.sends[0][1]).mls
    with pytest.raises(MeshdError):
        e.engine.process(ciphertext)  # even handed the bytes, e cannot open them
    assert e.mgr.receive(a.address, output.sends[0][1], now=net.now).events == []


def test_role_changes_and_admin_rules(net: Net) -> None:
    gid = five(net)
    a, b = net.peers["a"], net.peers["b"]
    net.out(a, a.mgr.set_role(gid, b.address, Role.ADMIN, now=net.now))
    net.run(3.0)
    assert all(net.peers[n].mgr.state(gid).view.roles[b.address] is Role.ADMIN for n in "abcde")
    assert any(isinstance(e, RoleChanged) and e.address == b.address for e in b.events)
    net.out(b, b.mgr.set_role(gid, a.address, Role.MEMBER, now=net.now))
    net.run(3.0)
    net.add("f")
    with pytest.raises(PermissionDenied):
        a.mgr.remove(gid, [net.peers["c"].address], now=net.now)
    with pytest.raises(FailedPrecondition, match="no admin"):
        b.mgr.set_role(gid, b.address, Role.MEMBER, now=net.now)
    with pytest.raises(FailedPrecondition, match="only admin"):
        b.mgr.leave(gid, now=net.now)
    net.out(b, b.mgr.invite(gid, [(net.kp("f"), Role.ADMIN)], now=net.now))
    net.run(3.0)
    f = net.peers["f"]
    assert f.mgr.state(gid).view.roles[f.address] is Role.ADMIN
    assert any(isinstance(e, MemberAdded) and e.by == b.address for e in net.peers["c"].events)
    assert len(net.tips(gid, "abcdef")) == 1


def test_leave_is_committed_by_an_admin(net: Net) -> None:
    gid = five(net)
    d = net.peers["d"]
    net.out(d, d.mgr.leave(gid, now=net.now))
    assert any(isinstance(e, GroupLeft) for e in d.events)
    net.run(15.0)
    for n in "abce":
        assert d.address not in net.peers[n].mgr.state(gid).view.roles
    assert len(net.tips(gid, "abce")) == 1
    assert gid not in d.engine.groups()


def test_periodic_self_update_rotates_keys(tmp_path: Path) -> None:
    net = Net(tmp_path, seed=5, config=GroupConfig(update_interval_s=30.0, catchup_retry_s=2.0))
    for n in "abc":
        net.add(n)
    gid = net.group("a", "bc")
    secret = net.secrets(gid, "abc")
    net.run(40.0, tick_every=1.0)
    assert len(net.secrets(gid, "abc")) == 1 and net.secrets(gid, "abc") != secret
    updates = [e for e in net.peers["a"].mgr.state(gid).log.values() if e.action is Action.UPDATE]
    assert len(updates) >= 3  # every member updated its own leaf (forks resolved if any)
    net.close()


def test_state_survives_restart_of_manager_and_engine(net: Net) -> None:
    gid = five(net)
    c = net.peers["c"]
    blob = c.mgr.state(gid).to_bytes()
    assert GroupState.from_bytes(blob).to_bytes() == blob
    c.engine.close()

    c.engine = MlsRsEngine(net.root / "c", c.identity)
    c.mgr = GroupManager(
        c.engine, c.identity, config=net.config, states=[GroupState.from_bytes(blob)]
    )
    net.send("a", gid, b"after restart")
    net.run(3.0)
    assert c.texts(gid) == [b"after restart"]


def test_commit_replay_and_bad_payloads_are_refused(net: Net) -> None:
    gid = five(net)
    a, b = net.peers["a"], net.peers["b"]
    output = a.mgr.self_update(gid, now=net.now)
    commit = next(p for d, p in output.sends if d == b.address)
    assert b.mgr.receive(a.address, commit, now=net.now).changed == {gid}
    assert b.mgr.receive(a.address, commit, now=net.now).events == []  # duplicate: ignored
    for bad in (b"", b"\x2e", b"\x21\x09", commit[:-1]):
        events = b.mgr.receive(a.address, bad, now=net.now).events
        assert len(events) == 1 and isinstance(events[0], PayloadRefused), bad[:4]
    second = next(p for d, p in a.mgr.self_update(gid, now=net.now).sends if d == b.address)
    events = b.mgr.receive(a.address, second[:-64] + bytes(64), now=net.now).events
    assert [e.reason for e in events if isinstance(e, PayloadRefused)] == [
        "bad signature on the group commit"
    ]
    assert isinstance(b.mgr.receive(a.address, second, now=net.now).events[-1], EpochAdvanced)


def test_256_member_group_add_and_fan_out(tmp_path: Path) -> None:
    net = Net(tmp_path, seed=11, loss=0.0, dup=0.0)
    for name in "abcf":
        net.add(name)
    a = net.peers["a"]
    gid, output = a.mgr.create("big", now=net.now)
    net.out(a, output)
    others = []
    for i in range(252):  # members that never come online: key packages only
        extra = MlsRsEngine(tmp_path / f"x{i}", Identity.generate())
        others.append(extra.generate_key_package(now=net.now).data)
        extra.close()
    invitees = [(net.kp(n), Role.MEMBER) for n in "bc"] + [(kp, Role.MEMBER) for kp in others]
    net.out(a, a.mgr.invite(gid, invitees, now=net.now))
    net.run(3.0)
    assert len(a.mgr.state(gid).members()) == 255
    assert len(net.tips(gid, "abc")) == 1
    output = a.mgr.invite(gid, [(net.kp("f"), Role.MEMBER)], now=net.now)
    welcome_parts = [p for d, p in output.sends if d == net.peers["f"].address]
    assert len(welcome_parts) == 2 and all(p[0] == 0x2F for p in welcome_parts)  # fragmented
    net.out(a, output)
    net.run(3.0)
    assert len(a.mgr.state(gid).members()) == 256
    assert len(net.tips(gid, "abcf")) == 1
    _, output = net.peers["f"].mgr.send(gid, "chat", b"hello 256", now=net.now)
    assert len(output.sends) == 255 and len({p for _, p in output.sends}) == 1
    net.out(net.peers["f"], output)
    net.run(2.0)
    assert net.peers["b"].texts(gid) == [b"hello 256"] == net.peers["c"].texts(gid)
    net.close()


def test_add_lost_in_a_fork_is_redone_with_a_fresh_key_package(tmp_path: Path) -> None:
    """Admin a adds f on one side while admin b updates on the other. When the Add loses,
    a asks for a fresh key package (the daemon's key_package_for), invites f again, and f
    replaces the group it joined on the losing branch with the new Welcome."""
    lost_add_seen = False
    for seed in range(1, 13):  # commit ids are random: stop once the Add has lost (p=1/2)
        net = Net(tmp_path / str(seed), seed=seed)
        for name in "abcdf":
            net.add(name)
        gid = net.group("a", "bcd")
        a, b = net.peers["a"], net.peers["b"]
        net.out(a, a.mgr.set_role(gid, b.address, Role.ADMIN, now=net.now))
        net.run(3.0)
        net.sides = [set("acf"), set("bd")]
        net.out(a, a.mgr.invite(gid, [(net.kp("f"), Role.MEMBER)], now=net.now))
        net.out(b, b.mgr.self_update(gid, now=net.now))
        net.run(3.0)
        assert net.peers["f"].mgr.state(gid).epoch == net.peers["a"].mgr.state(gid).epoch
        net.sides = None
        for _ in range(6):
            for name in "abcdf":
                net.send(name, gid, b"ping")
            net.run(4.0)
        everyone = "abcdf"
        assert len(net.tips(gid, everyone)) == 1, net.tips(gid, everyone)
        assert len(net.secrets(gid, everyone)) == 1
        assert net.peers["f"].address in net.peers["d"].mgr.state(gid).view.roles
        lost_add_seen = any(isinstance(e, KeyPackageNeeded) for e in a.events)
        net.send("f", gid, b"f talks")
        net.run(3.0)
        assert all(net.peers[n].texts(gid)[-1:] == [b"f talks"] for n in "abcd")
        net.close()
        if lost_add_seen:
            break
    assert lost_add_seen


def test_messages_overtaking_the_welcome_are_held_until_the_join(net: Net) -> None:
    for name in "abc":
        net.add(name)
    a, c = net.peers["a"], net.peers["c"]
    gid = net.group("a", "b")
    invite = a.mgr.invite(gid, [(net.kp("c"), Role.MEMBER)], now=net.now)
    welcome = [p for d, p in invite.sends if d == c.address]
    update = [p for d, p in a.mgr.self_update(gid, now=net.now).sends if d == c.address]
    _, sent = a.mgr.send(gid, "chat", b"early bird", now=net.now)
    data = [p for d, p in sent.sends if d == c.address]
    for payload in data + update:  # the mesh delivered these first
        assert c.mgr.receive(a.address, payload, now=net.now).events == []
    out = net.out(c, c.mgr.receive(a.address, welcome[0], now=net.now))
    assert [type(e).__name__ for e in out.events][:1] == ["GroupJoined"]
    assert c.texts(gid) == [b"early bird"]
    assert c.mgr.state(gid).epoch == a.mgr.state(gid).epoch


def test_crash_between_mls_and_group_state_is_reconciled(net: Net) -> None:
    """The engine persisted a commit but our state did not (crash before the store commit):
    on restart the engine is rolled back to our epoch and catch-up brings both forward."""
    gid = five(net)
    c = net.peers["c"]
    stale = c.mgr.state(gid).to_bytes()
    a = net.peers["a"]
    commit = [p for d, p in a.mgr.self_update(gid, now=net.now).sends if d == c.address]
    c.mgr.receive(a.address, commit[0], now=net.now)  # applied by the engine ...
    assert c.engine.epoch(gid) == GroupState.from_bytes(stale).epoch + 1
    c.mgr = GroupManager(c.engine, c.identity, config=net.config,
                         states=[GroupState.from_bytes(stale)])  # ... but not by us # fmt: skip
    assert c.engine.epoch(gid) == c.mgr.state(gid).epoch
    net.send("a", gid, b"after the crash")
    net.run(4.0)
    assert c.texts(gid) == [b"after the crash"]
    assert len(net.tips(gid, "ac")) == 1
