"""Identity, TOFU and contacts through the gRPC API and meshctl, on two real Nodes."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import grpc
import pytest

from meshctl.__main__ import amain
from meshd.api.v1 import contacts_pb2 as cpb
from meshd.api.v1 import contacts_pb2_grpc as cgrpc
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.crypto import fingerprint
from meshd.crypto.identity import Identity
from meshd.errors import PermissionDenied
from meshd.node import Node
from meshd.node_api import Caller
from meshd.store import Store
from meshd.store.contacts import ContactBook
from meshd.testing.memtransport import MemoryTransport, connect
from tests.integration.api_harness import api, next_event, node_pair

pytestmark = pytest.mark.timeout(60)


async def ctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def _wait_contact(sock: str, address: str) -> None:
    async with asyncio.timeout(10):
        while True:
            code, out, _ = await ctl("--socket", sock, "--json", "contacts")
            assert code == 0
            if address in [c["address"] for c in json.loads(out).get("contacts", [])]:
                return
            await asyncio.sleep(0.05)


async def test_identity_and_contacts_via_meshctl(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        a_key = pair.a.node.identity.public.signing_key
        b_key = pair.b.node.identity.public.signing_key
        code, out, err = await ctl("--socket", pair.a.socket, "identity")
        assert (code, err) == (0, "")
        lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        assert lines["address"].strip() == pair.a.address
        assert lines["fingerprint"].strip() == fingerprint.short_fingerprint(a_key)
        code, out, _ = await ctl("--socket", pair.a.socket, "identity", "--json")
        doc = json.loads(out)
        assert doc["address"] == pair.a.address and doc["signing_key"] == a_key.hex()
        assert doc["exchange_key"] == pair.a.node.identity.public.exchange_key.hex()

        # Each side pinned the other at link-up.
        await _wait_contact(pair.a.socket, pair.b.address)
        await _wait_contact(pair.b.socket, pair.a.address)
        code, out, _ = await ctl("--socket", pair.a.socket, "contacts", "list")
        header, row = out.splitlines()
        assert header.split()[:3] == ["ADDRESS", "NAME", "STATUS"]
        assert row.split()[:3] == [pair.b.address, "-", "unverified"]

        # Both ends show the same safety number.
        code, out, _ = await ctl("--socket", pair.a.socket, "--json", "contacts", "show",
                                 pair.b.address)  # fmt: skip
        shown_a = json.loads(out)["contact"]
        code, out, _ = await ctl("--socket", pair.b.socket, "contacts", "show", pair.a.address,
                                 "--json")  # fmt: skip
        shown_b = json.loads(out)["contact"]
        expected = fingerprint.format_safety_number(fingerprint.safety_number(a_key, b_key))
        assert shown_a["safety_number"] == shown_b["safety_number"] == expected
        assert shown_a["exchange_key"] == pair.b.node.identity.public.exchange_key.hex()
        assert shown_a["verified"] is False and shown_a["pending_exchange_key"] == ""

        # A wrong number is refused and changes nothing; the right one verifies.
        wrong = fingerprint.format_safety_number(fingerprint.safety_number(a_key, a_key))
        code, out, err = await ctl("--socket", pair.a.socket, "contacts", "verify",
                                   pair.b.address, wrong)  # fmt: skip
        assert code == 1 and "does not match" in err and out == ""
        code, _, err = await ctl("--socket", pair.a.socket, "contacts", "verify",
                                 pair.b.address, "12345")  # fmt: skip
        assert code == 1 and "safety_number" in err
        code, out, _ = await ctl("--socket", pair.a.socket, "contacts", "show", pair.b.address)
        assert "unverified" in out
        code, out, err = await ctl("--socket", pair.a.socket, "contacts", "verify",
                                   pair.b.address, *expected.split())  # fmt: skip
        assert code == 0, err
        assert "verified" in out and "unverified" not in out

        code, out, err = await ctl("--socket", pair.a.socket, "--json", "contacts", "name",
                                   pair.b.address, "bob")  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["contact"]["name"] == "bob"
        code, out, _ = await ctl("--socket", pair.a.socket, "contacts")
        assert out.splitlines()[1].split()[:3] == [pair.b.address, "bob", "verified"]
        code, _, err = await ctl("--socket", pair.a.socket, "contacts", "name",
                                 pair.b.address, "x" * 65)  # fmt: skip
        assert code == 1 and "name" in err

        # Nothing to trust yet; unknown and malformed addresses are clear errors.
        code, _, err = await ctl("--socket", pair.a.socket, "contacts", "trust", pair.b.address)
        assert code == 1 and "no changed key" in err
        stranger = Identity.generate().address.text
        code, _, err = await ctl("--socket", pair.a.socket, "contacts", "show", stranger)
        assert code == 1 and "no contact" in err
        code, _, err = await ctl("--socket", pair.a.socket, "contacts", "show", "nonsense")
        assert code == 1 and "address" in err


async def test_changed_key_refused_until_trusted(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        await _wait_contact(pair.a.socket, pair.b.address)
        b_ident = pair.b.node.identity
        pinned_x = b_ident.public.exchange_key.hex()
        async with api(pair.a.socket, app="watcher") as a:
            stream = a.msg.Subscribe(mpb.SubscribeRequest(), metadata=a.md)
            # B's Ed25519 key, another X25519 key: same address, changed exchange key.
            rekeyed = Identity.from_seed(b_ident.private_bytes()[8:40] + b"\x5a" * 32)
            assert rekeyed.address == b_ident.address
            pair.wire.cut()
            tc = MemoryTransport(rekeyed.public)
            (tmp_path / "c").mkdir()
            c = Node(rekeyed, Store.open(tmp_path / "c" / "meshd.db"), [tc],
                     state_dir=tmp_path / "c")  # fmt: skip
            await c.start()
            try:
                connect(pair.a.transport, tc)
                async with asyncio.timeout(10):
                    event = await next_event(stream, "key_changed")
                assert event.key_changed.peer == pair.b.address
                assert "refused" in event.key_changed.detail
                stream.cancel()

                contacts = cgrpc.ContactsServiceStub(a.channel)
                got = await contacts.GetContact(
                    cpb.GetContactRequest(address=pair.b.address), metadata=a.md
                )
                assert got.exchange_key == pinned_x  # not applied
                assert got.pending_exchange_key == rekeyed.public.exchange_key.hex()
                assert got.HasField("key_changed_at")
                assert pair.a.node.trust.pinned(b_ident.address) == b_ident.public
                code, out, _ = await ctl("--socket", pair.a.socket, "contacts")
                assert "KEY CHANGED" in out.splitlines()[1]

                # An app that is neither admin nor meshd's user cannot accept it.
                app = Caller(uid=54321, gid=54321, pid=1, app_id="x", is_admin=False)
                with pytest.raises(PermissionDenied):
                    await pair.a.node.trust_key_change(app, b_ident.address)

                code, out, err = await ctl("--socket", pair.a.socket, "--json", "contacts",
                                           "trust", pair.b.address)  # fmt: skip
                assert code == 0, err
                doc = json.loads(out)["contact"]
                assert doc["exchange_key"] == rekeyed.public.exchange_key.hex()
                assert doc["pending_exchange_key"] == ""
                assert pair.a.node.trust.pinned(b_ident.address) == rekeyed.public
                # The change is in the store (a fresh read, no cache).
                stored = ContactBook(pair.a.node.store).require(b_ident.address)
                assert stored.identity == rekeyed.public
            finally:
                await c.stop()


async def test_contacts_service_errors_over_grpc(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket) as a:
        contacts = cgrpc.ContactsServiceStub(a.channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts.GetContact(cpb.GetContactRequest(address=""), metadata=a.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "address" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts.GetContact(
                cpb.GetContactRequest(address=Identity.generate().address.text), metadata=a.md
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await _wait_contact(pair.a.socket, pair.b.address)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts.TrustKeyChange(
                cpb.TrustKeyChangeRequest(address=pair.b.address), metadata=a.md
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts.VerifyContact(
                cpb.VerifyContactRequest(address=pair.b.address, safety_number="1" * 60),
                metadata=a.md,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
