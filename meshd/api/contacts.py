"""The ContactsService servicer: identity, TOFU pins and contacts (``ContactsApi``)."""

from __future__ import annotations

from typing import Any

from meshd.api import convert
from meshd.api.caller import CallerResolver
from meshd.api.v1 import contacts_pb2 as cpb
from meshd.api.v1 import contacts_pb2_grpc as cgrpc
from meshd.crypto.fingerprint import format_safety_number
from meshd.node_api import ContactInfo, ContactsApi, IdentityInfo


def node_identity(info: IdentityInfo) -> cpb.NodeIdentity:
    return cpb.NodeIdentity(
        address=info.address.text,
        signing_key=info.signing_key.hex(),
        exchange_key=info.exchange_key.hex(),
        fingerprint=info.fingerprint,
    )


def contact(info: ContactInfo) -> cpb.Contact:
    c = info.contact
    out = cpb.Contact(
        address=c.address.text,
        name=c.name,
        signing_key=c.signing_key.hex(),
        exchange_key=c.exchange_key.hex(),
        fingerprint=info.fingerprint,
        verified=c.verified,
        pending_exchange_key=c.pending_exchange_key.hex() if c.pending_exchange_key else "",
        first_seen=convert.timestamp(c.first_seen),
        last_seen=convert.timestamp(c.last_seen),
        safety_number=format_safety_number(info.safety_number) if info.safety_number else "",
    )
    if c.key_changed_at is not None:
        out.key_changed_at.CopyFrom(convert.timestamp(c.key_changed_at))
    return out


class ContactsServicer(cgrpc.ContactsServiceServicer):
    def __init__(self, node: ContactsApi, callers: CallerResolver) -> None:
        self._node = node
        self._callers = callers

    async def GetIdentity(self, request: cpb.GetIdentityRequest, context: Any) -> cpb.NodeIdentity:
        self._callers.caller(context)
        return node_identity(self._node.identity_info())

    async def ListContacts(
        self, request: cpb.ListContactsRequest, context: Any
    ) -> cpb.ListContactsResponse:
        self._callers.caller(context)
        return cpb.ListContactsResponse(contacts=[contact(c) for c in self._node.list_contacts()])

    async def GetContact(self, request: cpb.GetContactRequest, context: Any) -> cpb.Contact:
        self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        return contact(self._node.get_contact(address))

    async def SetContactName(
        self, request: cpb.SetContactNameRequest, context: Any
    ) -> cpb.Contact:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        return contact(await self._node.set_contact_name(caller, address, request.name))

    async def TrustKeyChange(
        self, request: cpb.TrustKeyChangeRequest, context: Any
    ) -> cpb.Contact:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        return contact(await self._node.trust_key_change(caller, address))

    async def VerifyContact(self, request: cpb.VerifyContactRequest, context: Any) -> cpb.Contact:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        return contact(await self._node.verify_contact(caller, address, request.safety_number))
