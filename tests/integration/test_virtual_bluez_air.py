"""The sans-IO air model of the virtual BlueZ (no D-Bus needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import FailedPrecondition, InvalidArgument, NotFound
from meshd.testing.virtual_bluez.air import Air, ConnectionLost, LinkParams, PowerChanged


def _air(*names: str) -> Air:
    air = Air(seed=1)
    for name in names:
        air.add_node(name)
    return air


def test_range_is_symmetric_and_explicit() -> None:
    air = _air("a", "b", "c")
    air.set_link("a", "b", rssi=-70, mtu=23)
    assert air.in_range("b", "a")
    assert not air.in_range("a", "c")
    assert air.link("b", "a") == LinkParams(rssi=-70, mtu=23)
    assert air.neighbours("a") == ["b"]
    assert air.neighbours("c") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"rssi": 21}, "rssi"), ({"mtu": 22}, "mtu"), ({"mtu": 518}, "mtu"), ({"loss": 1.5}, "loss")],
)
def test_bad_link_parameters_name_the_field(kwargs: dict[str, float], field: str) -> None:
    air = _air("a", "b")
    with pytest.raises(InvalidArgument) as err:
        air.set_link("a", "b", **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_unknown_and_duplicate_nodes() -> None:
    air = _air("a")
    with pytest.raises(InvalidArgument):
        air.add_node("a")
    with pytest.raises(NotFound):
        air.set_link("a", "zz")
    with pytest.raises(InvalidArgument):
        air.set_link("a", "a")


def test_connect_needs_range_and_power() -> None:
    air = _air("c", "p")
    with pytest.raises(FailedPrecondition, match="out of range"):
        air.connect("c", "p")
    air.set_link("c", "p", mtu=185)
    air.set_powered("p", False)
    with pytest.raises(FailedPrecondition, match="off"):
        air.connect("c", "p")
    air.set_powered("p", True)
    assert air.connect("c", "p").mtu == 185
    assert air.connected("c", "p")
    assert not air.connected("p", "c")  # direction matters: c is the central


def test_one_connection_per_pair_in_either_role() -> None:
    air = _air("c", "p")
    air.set_link("c", "p", mtu=100)
    air.connect("c", "p")
    with pytest.raises(FailedPrecondition, match="already connected"):
        air.connect("p", "c")
    assert air.connection_between("p", "c") == ("c", "p")
    assert air.connection_mtu("p", "c") == 100
    air.update_link("c", "p", mtu=50)  # a live connection keeps the MTU it was opened with
    assert air.connection_mtu("c", "p") == 100
    assert air.disconnect("p", "c")  # either side may end it
    assert air.connection_between("c", "p") is None
    assert air.connection_mtu("c", "p") is None


def test_power_off_loses_every_connection_of_the_node() -> None:
    air = _air("a", "b", "c")
    air.set_link("a", "b")
    air.set_link("b", "c")
    air.connect("a", "b")
    air.connect("b", "c")
    events = air.set_powered("b", False)
    assert events == [
        ConnectionLost("a", "b", "adapter powered off"),
        ConnectionLost("b", "c", "adapter powered off"),
        PowerChanged("b", False),
    ]
    assert air.connections() == []
    assert air.set_powered("b", False) == []  # no change, no event
    assert air.set_powered("b", True) == [PowerChanged("b", True)]


def test_cut_link_and_drop_connection() -> None:
    air = _air("a", "b", "c")
    air.set_link("a", "b")
    air.set_link("a", "c")
    air.connect("a", "b")
    air.connect("a", "c")
    assert air.drop_connection("b", "a") == [ConnectionLost("a", "b", "connection dropped")]
    assert air.in_range("a", "b")  # only the connection died
    assert air.cut_link("a", "c") == [ConnectionLost("a", "c", "out of range")]
    assert not air.in_range("a", "c")
    assert air.connections() == []


def test_disconnect_reports_whether_there_was_a_connection() -> None:
    air = _air("a", "b")
    air.set_link("a", "b")
    assert not air.disconnect("a", "b")
    air.connect("a", "b")
    assert air.disconnect("a", "b")
    assert not air.connected("a", "b")


def test_update_link_changes_one_condition() -> None:
    air = _air("a", "b")
    air.set_link("a", "b", rssi=-50, mtu=100)
    air.update_link("a", "b", rssi=-90)
    assert air.link("a", "b") == LinkParams(rssi=-90, mtu=100)
    air.cut_link("a", "b")
    with pytest.raises(NotFound):
        air.update_link("a", "b", rssi=-10)


def test_remove_node_drops_its_links_and_connections() -> None:
    air = _air("a", "b")
    air.set_link("a", "b")
    air.connect("b", "a")
    assert air.remove_node("a") == [ConnectionLost("b", "a", "node removed")]
    assert air.neighbours("b") == []
    assert air.nodes == ["b"]


def test_advertisement_loss_is_seeded_and_near_its_rate() -> None:
    def heard(seed: int) -> list[bool]:
        air = Air(seed=seed)
        air.add_node("s")
        air.add_node("a")
        air.set_link("s", "a", loss=0.3)
        return [air.heard("s", "a") for _ in range(2000)]

    first = heard(7)
    assert first == heard(7)
    assert 0.25 < first.count(False) / len(first) < 0.35


def test_nothing_is_heard_when_off_or_out_of_range() -> None:
    air = _air("s", "a", "b")
    air.set_link("s", "a")
    assert air.heard("s", "a")
    assert not air.heard("s", "b")
    air.set_powered("a", False)
    assert not air.heard("s", "a")
    air.set_powered("a", True)
    air.set_powered("s", False)
    assert not air.heard("s", "a")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["link", "cut", "connect", "disconnect", "drop", "off", "on"]),
            st.sampled_from("abcd"),
            st.sampled_from("abcd"),
        ),
        max_size=40,
    )
)
def test_connections_only_exist_between_powered_nodes_in_range(
    ops: list[tuple[str, str, str]],
) -> None:
    air = _air("a", "b", "c", "d")
    for op, x, y in ops:
        try:
            if op == "link" and x != y:
                air.set_link(x, y)
            elif op == "cut":
                air.cut_link(x, y)
            elif op == "connect":
                air.connect(x, y)
            elif op == "disconnect":
                air.disconnect(x, y)
            elif op == "drop":
                air.drop_connection(x, y)
            elif op == "off":
                air.set_powered(x, False)
            elif op == "on":
                air.set_powered(x, True)
        except (FailedPrecondition, NotFound):
            pass
        for central, peripheral in air.connections():
            assert air.in_range(central, peripheral)
            assert air.powered(central) and air.powered(peripheral)
