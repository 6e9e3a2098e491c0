"""Serve the gRPC API on the public Unix socket: ``await serve(node, path)``.

Layout: the public socket (0660, group ``meshd`` when it exists) is owned by the
credential relay (``meshd.api.relay``); the gRPC server itself listens on a socket in a
private 0700 directory that only meshd's user can reach.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from meshd.api.caller import CallerResolver
from meshd.api.contacts import ContactsServicer
from meshd.api.errors import ErrorMappingInterceptor
from meshd.api.groups import GroupsApi, GroupsServicer
from meshd.api.relay import SUN_PATH_MAX, CredentialRegistry, CredentialRelay
from meshd.api.servicers import MessagingServicer, NodeServicer
from meshd.api.sessions import SessionsApi, SessionsServicer
from meshd.api.v1 import (
    contacts_pb2,
    contacts_pb2_grpc,
    groups_pb2,
    groups_pb2_grpc,
    messaging_pb2,
    messaging_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)
from meshd.errors import FailedPrecondition, InvalidArgument
from meshd.node_api import ContactsApi, NodeApi

SOCKET_GROUP = "meshd"
ADMIN_GROUP = "meshd-admin"
SERVICE_NAMES = (
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
    contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["SessionsService"].full_name,
    groups_pb2.DESCRIPTOR.services_by_name["GroupsService"].full_name,
)
_LISTEN_BACKLOG = 128
_RELAY_NAME_ROOM = 12  # "/c" + a connection counter


class ApiServer:
    """A running API server; ``stop`` it once."""

    def __init__(
        self,
        *,
        socket_path: str,
        private_dir: str,
        grpc_server: grpc.aio.Server,
        relay: CredentialRelay,
        health_servicer: health.aio.HealthServicer,
        messaging: MessagingServicer,
        registry: CredentialRegistry,
        socket_inode: int,
    ) -> None:
        self.socket_path = socket_path
        self.private_dir = private_dir
        self.registry = registry
        self._grpc = grpc_server
        self._relay = relay
        self._health = health_servicer
        self._messaging = messaging
        self._inode = socket_inode
        self._stopped = False

    async def stop(self, grace: float | None = 1.0) -> None:
        """Refuse new connections, let calls finish for ``grace`` s, then clean up."""
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        await self._relay.stop_accepting()
        self._messaging.end_streams()  # Subscribe never ends by itself: do not wait `grace`
        await self._grpc.stop(grace)
        await self._relay.stop()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.socket_path).st_ino == self._inode:  # not a successor's socket
                os.unlink(self.socket_path)
        shutil.rmtree(self.private_dir, ignore_errors=True)


async def serve(
    node: NodeApi,
    socket_path: str,
    *,
    socket_group: str = SOCKET_GROUP,
    admin_group: str = ADMIN_GROUP,
) -> ApiServer:
    """Start the API on ``socket_path`` (parent directories are created)."""
    log = structlog.get_logger("meshd.api").bind(node=node.address.short)
    path, private_dir = _prepare_paths(socket_path)

    registry = CredentialRegistry()
    callers = CallerResolver(registry)
    # The error mapping wraps meshd's handlers at registration rather than as a server
    # interceptor: grpc.aio runs interceptors as a coroutine chain on every call.
    server = grpc.aio.server()
    mapped = ErrorMappingInterceptor(log).registrar(server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(node, callers), mapped)
    messaging = MessagingServicer(node, callers)
    messaging_pb2_grpc.add_MessagingServiceServicer_to_server(messaging, mapped)
    if isinstance(node, ContactsApi):  # the real Node; a NodeApi-only test double has none
        contacts_pb2_grpc.add_ContactsServiceServicer_to_server(
            ContactsServicer(node, callers), mapped
        )
    if isinstance(node, SessionsApi):  # connection requests, policy (meshd/api/sessions.py)
        sessions_pb2_grpc.add_SessionsServiceServicer_to_server(
            SessionsServicer(node, callers), mapped
        )
    if isinstance(node, GroupsApi):  # MLS groups (meshd/api/groups.py)
        groups_pb2_grpc.add_GroupsServiceServicer_to_server(GroupsServicer(node, callers), mapped)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    backend = os.path.join(private_dir, "grpc.sock")
    try:
        server.add_insecure_port(f"unix:{backend}")
        await server.start()
        sock = _listen(path, private_dir, socket_group, log)
    except BaseException:
        await server.stop(None)
        shutil.rmtree(private_dir, ignore_errors=True)
        raise
    relay = CredentialRelay(registry, backend, private_dir, log, admin_group=admin_group)
    await relay.start(sock)
    log.info("api_listening", socket=path)
    return ApiServer(
        socket_path=path,
        private_dir=private_dir,
        grpc_server=server,
        relay=relay,
        health_servicer=health_servicer,
        messaging=messaging,
        registry=registry,
        socket_inode=os.stat(path).st_ino,
    )


def _prepare_paths(socket_path: str) -> tuple[str, str]:
    """The absolute public path (parents created, stale socket gone) and a private dir."""
    path = os.path.abspath(socket_path)
    if len(path.encode()) > SUN_PATH_MAX:
        raise InvalidArgument(f"longer than {SUN_PATH_MAX} bytes: {path}", field="socket")
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _remove_stale_socket(path)
    return path, _make_private_dir(os.path.dirname(path))


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket nobody listens on; refuse to touch a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FailedPrecondition(f"{path} exists and is not a socket", field="socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another process is already serving on {path}", field="socket")


def _make_private_dir(public_dir: str) -> str:
    """A 0700 directory for the gRPC socket and the relay's per-connection names."""
    for base in (public_dir, tempfile.gettempdir()):
        try:
            candidate = tempfile.mkdtemp(prefix=".meshd-api-", dir=base)
        except OSError:
            continue
        if len(candidate.encode()) + _RELAY_NAME_ROOM <= SUN_PATH_MAX:
            return candidate
        os.rmdir(candidate)
    raise FailedPrecondition("no directory short enough for the private API socket")


def _listen(
    path: str, private_dir: str, group: str, log: structlog.typing.FilteringBoundLogger
) -> socket.socket:
    """Bind inside the private dir, set mode and group, then rename into place: no window
    where the public path exists with looser permissions (and no process-wide umask)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = os.path.join(private_dir, "public.sock")
    try:
        sock.bind(staging)
        os.chmod(staging, 0o660)
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            gid = None
        if gid is not None:
            try:
                os.chown(staging, -1, gid)
            except PermissionError:
                log.warning("api_socket_group_unchanged", group=group, socket=path)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
        os.rename(staging, path)
    except BaseException:
        sock.close()
        raise
    return sock
