"""A custodian killed with SIGKILL still delivers what it promised to keep (issue 3: router
state in SQLite; issue 2: custody). Real meshd processes in a line a-b-c of namespaces."""

from __future__ import annotations

from collections import Counter

import pytest

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.testing.netns import chain
from tests.system.conftest import LabFactory
from tests.system.mesh_api import Api, payloads, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.netns]

HELD = mpb.DELIVERY_STATE_HELD_BY_CUSTODIAN
DELIVERED = mpb.DELIVERY_STATE_DELIVERED


@pytest.mark.timeout(300)
async def test_kill9_of_a_custodian_loses_no_held_message(make_lab: LabFactory) -> None:
    lab = make_lab(*chain(3))
    lab.start_all()
    sock = {n: str(lab.daemon(n).socket_path) for n in "abc"}
    async with Api(sock["c"]) as c:
        dst = await c.address()
    async with Api(sock["a"]) as a:
        warm = await a.send(dst, b"warm-up")  # paths, and the 1:1 session with c
        await wait_for(lambda: _state_is(a, warm, DELIVERED), within=90, what="warm-up")
    lab.stop("c")  # the destination goes offline

    async with Api(sock["a"]) as a:
        held = await a.send(dst, b"kept by b")
        # b cannot reach c: it takes custody and its receipt (sent only once the frame
        # is on b's disk) stops a's retries.
        await wait_for(lambda: _state_is(a, held, HELD), within=90, what="held by b")
    lab.kill9("b")
    lab.stop("a")  # only b's disk can deliver it now
    lab.start("b")
    lab.start("c")
    async with Api(sock["c"]) as c:
        events = await c.events(lambda got: b"kept by b" in payloads(got), within=120,
                                linger=3.0)
    counts = Counter(payloads(events))
    assert counts[b"kept by b"] == 1, counts


async def _state_is(api: Api, message_id: str, state: int) -> bool:
    return bool((await api.get(message_id)).state == state)
