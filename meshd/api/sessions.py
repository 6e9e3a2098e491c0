"""The SessionsService servicer: connection requests, the accept_from policy, sessions."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from meshd.address import NodeAddress
from meshd.api import convert
from meshd.api.caller import CallerResolver
from meshd.api.v1 import sessions_pb2 as spb
from meshd.api.v1 import sessions_pb2_grpc as sgrpc
from meshd.e2e.requests import RequestInfo
from meshd.e2e.sessions import SessionInfo
from meshd.errors import InvalidArgument
from meshd.node_api import Caller

_DIRECTIONS = {
    "incoming": spb.REQUEST_DIRECTION_INCOMING,
    "outgoing": spb.REQUEST_DIRECTION_OUTGOING,
}
_POLICIES = {"anyone": spb.ACCEPT_FROM_ANYONE, "contacts": spb.ACCEPT_FROM_CONTACTS}


@runtime_checkable
class SessionsApi(Protocol):
    """What the servicer needs from the node (``meshd.node_sessions.SessionMessages``)."""

    async def connect(self, caller: Caller, dst: NodeAddress, text: bytes) -> RequestInfo: ...

    def list_requests(self, caller: Caller, direction: str | None = None) -> list[RequestInfo]:
        ...

    async def accept_request(self, caller: Caller, peer: NodeAddress) -> None: ...

    async def reject_request(self, caller: Caller, peer: NodeAddress) -> None: ...

    async def cancel_request(self, caller: Caller, peer: NodeAddress) -> None: ...

    def get_policy(self) -> Any: ...

    async def set_policy(self, caller: Caller, accept_from: str) -> Any: ...

    def session_info(self, peer: NodeAddress) -> SessionInfo: ...


def request_pb(r: RequestInfo) -> spb.ConnectionRequest:
    return spb.ConnectionRequest(
        peer=r.peer.text,
        direction=_DIRECTIONS[r.direction],
        created_at=convert.timestamp(r.created_at),
        expires_at=convert.timestamp(r.expires_at),
        held_messages=r.messages,
    )


class SessionsServicer(sgrpc.SessionsServiceServicer):
    def __init__(self, node: SessionsApi, callers: CallerResolver) -> None:
        self._node = node
        self._callers = callers

    async def Connect(self, request: spb.ConnectRequest, context: Any) -> spb.ConnectionRequest:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        return request_pb(await self._node.connect(caller, address, bytes(request.text)))

    async def ListRequests(
        self, request: spb.ListRequestsRequest, context: Any
    ) -> spb.ListRequestsResponse:
        caller = self._callers.caller(context)
        direction = {v: k for k, v in _DIRECTIONS.items()}.get(request.direction)
        items = self._node.list_requests(caller, direction)
        return spb.ListRequestsResponse(requests=[request_pb(r) for r in items])

    async def AcceptRequest(self, request: spb.PeerRequest, context: Any) -> spb.RequestDone:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        await self._node.accept_request(caller, address)
        return spb.RequestDone()

    async def RejectRequest(self, request: spb.PeerRequest, context: Any) -> spb.RequestDone:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        await self._node.reject_request(caller, address)
        return spb.RequestDone()

    async def CancelRequest(self, request: spb.PeerRequest, context: Any) -> spb.RequestDone:
        caller = self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        await self._node.cancel_request(caller, address)
        return spb.RequestDone()

    async def GetPolicy(self, request: spb.GetPolicyRequest, context: Any) -> spb.Policy:
        self._callers.caller(context)
        return spb.Policy(accept_from=_POLICIES[self._node.get_policy().accept_from])

    async def SetPolicy(self, request: spb.SetPolicyRequest, context: Any) -> spb.Policy:
        caller = self._callers.caller(context)
        names = {v: k for k, v in _POLICIES.items()}
        if request.accept_from not in names:
            raise InvalidArgument("accept_from must be ANYONE or CONTACTS", field="accept_from")
        policy = await self._node.set_policy(caller, names[request.accept_from])
        return spb.Policy(accept_from=_POLICIES[policy.accept_from])

    async def GetSession(self, request: spb.PeerRequest, context: Any) -> spb.SessionInfo:
        self._callers.caller(context)
        address = convert.parse_address(request.address, field="address")
        info = self._node.session_info(address)
        return spb.SessionInfo(peer=info.peer.text, group_id=info.group_id.hex(),
                               epoch=info.epoch, established=info.established)  # fmt: skip
