"""The GroupsService servicer: MLS groups, members and roles, group messages."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from meshd.address import NodeAddress
from meshd.api import convert
from meshd.api.caller import CallerResolver
from meshd.api.v1 import groups_pb2 as gpb
from meshd.api.v1 import groups_pb2_grpc as ggrpc
from meshd.e2e.group_wire import Role
from meshd.errors import InvalidArgument
from meshd.node_api import Caller
from meshd.node_groups import GroupInfo, GroupMemberInfo
from meshd.store.groups import GroupMessageRow

_ROLES = {Role.MEMBER: gpb.GROUP_ROLE_MEMBER, Role.ADMIN: gpb.GROUP_ROLE_ADMIN}
_MAX_GROUP_ID_HEX = 2 * 255


@runtime_checkable
class GroupsApi(Protocol):
    """What the servicer needs from the node (``meshd.node_groups.GroupMessages``)."""

    async def create_group(self, caller: Caller, name: str) -> GroupInfo: ...

    async def invite_to_group(
        self, caller: Caller, group_id: bytes, members: list[NodeAddress], role: Role
    ) -> GroupInfo: ...

    async def remove_from_group(
        self, caller: Caller, group_id: bytes, members: list[NodeAddress]
    ) -> GroupInfo: ...

    async def set_group_role(
        self, caller: Caller, group_id: bytes, member: NodeAddress, role: Role
    ) -> GroupInfo: ...

    async def leave_group(self, caller: Caller, group_id: bytes) -> None: ...

    def list_groups(self, caller: Caller) -> list[GroupInfo]: ...

    def group_members(self, caller: Caller, group_id: bytes) -> list[GroupMemberInfo]: ...

    async def send_group_message(
        self, caller: Caller, group_id: bytes, content: bytes
    ) -> bytes: ...

    def group_history(
        self, caller: Caller, group_id: bytes, *, limit: int
    ) -> list[GroupMessageRow]: ...


def parse_group_id(text: str) -> bytes:
    cleaned = text.strip().lower()
    if not cleaned or len(cleaned) > _MAX_GROUP_ID_HEX:
        raise InvalidArgument("a group id is 1..255 bytes of hex", field="group_id")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise InvalidArgument("a group id is hex", field="group_id") from None


def parse_role(value: int, *, default: Role | None) -> Role:
    if value == gpb.GROUP_ROLE_UNSPECIFIED and default is not None:
        return default
    for role, wire in _ROLES.items():
        if wire == value:
            return role
    raise InvalidArgument("role must be MEMBER or ADMIN", field="role")


def group_pb(g: GroupInfo) -> gpb.Group:
    return gpb.Group(group_id=g.group_id.hex(), name=g.name, epoch=g.epoch, members=g.members,
                     role=_ROLES[g.role], admins=[a.text for a in g.admins])  # fmt: skip


def message_pb(r: GroupMessageRow) -> gpb.GroupMessage:
    at = convert.timestamp(r.received_at)
    return gpb.GroupMessage(message_id=r.message_id.hex(), sender=r.sender.text,
                            content=r.content, received_at=at,
                            state=convert.delivery_state(r.state))  # fmt: skip


def _addresses(texts: Any) -> list[NodeAddress]:
    return [convert.parse_address(t, field="addresses") for t in texts]


class GroupsServicer(ggrpc.GroupsServiceServicer):
    def __init__(self, node: GroupsApi, callers: CallerResolver) -> None:
        self._node = node
        self._callers = callers

    async def CreateGroup(self, request: gpb.CreateGroupRequest, context: Any) -> gpb.Group:
        caller = self._callers.caller(context)
        return group_pb(await self._node.create_group(caller, request.name))

    async def Invite(self, request: gpb.InviteRequest, context: Any) -> gpb.Group:
        caller = self._callers.caller(context)
        gid = parse_group_id(request.group_id)
        role = parse_role(request.role, default=Role.MEMBER)
        members = _addresses(request.addresses)
        return group_pb(await self._node.invite_to_group(caller, gid, members, role))

    async def Remove(self, request: gpb.RemoveRequest, context: Any) -> gpb.Group:
        caller = self._callers.caller(context)
        gid = parse_group_id(request.group_id)
        members = _addresses(request.addresses)
        return group_pb(await self._node.remove_from_group(caller, gid, members))

    async def Leave(self, request: gpb.GroupRequest, context: Any) -> gpb.LeaveResponse:
        caller = self._callers.caller(context)
        await self._node.leave_group(caller, parse_group_id(request.group_id))
        return gpb.LeaveResponse()

    async def SetRole(self, request: gpb.SetRoleRequest, context: Any) -> gpb.Group:
        caller = self._callers.caller(context)
        gid = parse_group_id(request.group_id)
        member = convert.parse_address(request.address, field="address")
        role = parse_role(request.role, default=None)
        return group_pb(await self._node.set_group_role(caller, gid, member, role))

    async def ListGroups(
        self, request: gpb.ListGroupsRequest, context: Any
    ) -> gpb.ListGroupsResponse:
        caller = self._callers.caller(context)
        return gpb.ListGroupsResponse(groups=[group_pb(g) for g in self._node.list_groups(caller)])

    async def ListMembers(self, request: gpb.GroupRequest, context: Any) -> gpb.ListMembersResponse:
        caller = self._callers.caller(context)
        members = self._node.group_members(caller, parse_group_id(request.group_id))
        return gpb.ListMembersResponse(
            members=[gpb.GroupMember(address=m.address.text, role=_ROLES[m.role]) for m in members]
        )

    async def SendGroupMessage(
        self, request: gpb.SendGroupMessageRequest, context: Any
    ) -> gpb.SendGroupMessageResponse:
        caller = self._callers.caller(context)
        gid = parse_group_id(request.group_id)
        mid = await self._node.send_group_message(caller, gid, bytes(request.content))
        return gpb.SendGroupMessageResponse(message_id=mid.hex())

    async def GroupHistory(
        self, request: gpb.GroupHistoryRequest, context: Any
    ) -> gpb.GroupHistoryResponse:
        caller = self._callers.caller(context)
        gid = parse_group_id(request.group_id)
        rows = self._node.group_history(caller, gid, limit=request.limit or 100)
        return gpb.GroupHistoryResponse(messages=[message_pb(r) for r in rows])
