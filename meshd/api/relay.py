"""The public API socket: a byte relay that learns each caller's SO_PEERCRED.

grpc-python does not expose a Unix-socket client's credentials: ``auth_context()`` is
empty (``local_server_credentials(UDS)`` never calls ``getsockopt``; grpc/grpc#15511,
#28755) and ``context.peer()`` of an unbound client is just ``unix:``. So meshd owns the
public socket: it accepts a connection, reads SO_PEERCRED, and relays the bytes to the
gRPC server listening on a private socket in a 0700 directory. The relay's own client
socket is bound to a unique path per connection, which the gRPC server reports as
``context.peer()`` == ``unix:<path>``: that path is the key to the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog

from meshd.api.peercred import PeerCred, is_admin, peer_credentials
from meshd.errors import PermissionDenied

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux (unix(7))
MAX_CONNECTIONS = 1024  # open API connections at once (apps keep one channel each)


@dataclass(frozen=True, slots=True)
class Connection:
    cred: PeerCred
    is_admin: bool


class CredentialRegistry:
    """Maps the relay's per-connection bound path (as gRPC reports it) to the caller."""

    def __init__(self) -> None:
        self._by_peer: dict[str, Connection] = {}

    def add(self, path: str, conn: Connection) -> None:
        self._by_peer["unix:" + path] = conn

    def remove(self, path: str) -> None:
        self._by_peer.pop("unix:" + path, None)

    def lookup(self, peer: str) -> Connection:
        conn = self._by_peer.get(peer)
        if conn is None:
            raise PermissionDenied("caller unknown: not connected through the API socket")
        return conn

    def __len__(self) -> int:
        return len(self._by_peer)


class _Pipe(asyncio.Protocol):
    """One direction's receiver; writes what it reads to ``other`` with flow control."""

    def __init__(
        self, on_lost: Callable[[], None], on_made: Callable[[_Pipe], None] | None = None
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self.other: _Pipe | None = None
        self._pending: list[bytes] = []
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self._pending.append(data)  # the backend connection is still being set up
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        # HTTP/2 never half-closes: EOF from either side ends the connection. (Passing
        # the half-close on left some relayed pairs open once the client had gone.)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()  # flushes what is buffered first
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        self._on_lost()

    # Our transport's write buffer is full: stop reading from the other side.
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def join(self, other: _Pipe) -> None:
        """Link both directions and flush what arrived before the link existed."""
        self.other, other.other = other, self
        for side in (self, other):
            assert side.other is not None and side.other.transport is not None
            for chunk in side._pending:
                side.other.transport.write(chunk)
            side._pending.clear()


class CredentialRelay:
    """Accepts on the public socket and relays each connection to ``backend_path``."""

    def __init__(
        self,
        registry: CredentialRegistry,
        backend_path: str,
        private_dir: str,
        log: structlog.typing.FilteringBoundLogger,
        *,
        admin_group: str = "meshd-admin",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._registry = registry
        self._max = max_connections
        self._backend = backend_path
        self._dir = private_dir
        self._log = log
        self._admin_group = admin_group
        self._ids = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening Unix socket."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._accepted, sock=sock)

    def _accepted(self) -> _Pipe:
        return _Pipe(lambda: None, on_made=self._connection_made)

    def _connection_made(self, front: _Pipe) -> None:
        assert front.transport is not None
        if len(self._pipes) + len(self._tasks) >= self._max:
            # Every connection holds a gRPC connection and two sockets: bound them.
            self._log.warning("api_connection_limit", limit=self._max)
            front.transport.abort()
            return
        front.transport.pause_reading()  # until the backend is connected
        task = asyncio.get_running_loop().create_task(self._attach(front, front.transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, front: _Pipe, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        try:
            cred = peer_credentials(sock)
        except (PermissionDenied, OSError) as exc:
            self._log.warning("api_refused_connection", reason=str(exc))
            transport.close()
            return
        path = os.path.join(self._dir, f"c{next(self._ids)}")
        conn = Connection(cred, is_admin(cred, admin_group=self._admin_group))
        self._registry.add(path, conn)
        back = _Pipe(lambda: self._registry.remove(path))
        back_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back_sock.setblocking(False)
            back_sock.bind(path)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(back_sock, self._backend)
            await loop.create_unix_connection(lambda: back, sock=back_sock)
        except BaseException as exc:  # OSError, or cancelled by stop()
            back_sock.close()
            self._registry.remove(path)
            transport.close()
            if not isinstance(exc, OSError):
                raise
            self._log.error("api_backend_unreachable", error=str(exc))
            return
        finally:
            # The kernel keeps the bound name for getpeername(); the file is not needed.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if transport.is_closing():
            assert back.transport is not None
            back.transport.close()
            return
        front.join(back)
        self._pipes.add(front)
        front._on_lost = lambda: self._pipes.discard(front)
        transport.resume_reading()

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        """Stop accepting, then close every relayed connection."""
        await self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()
        for pipe in list(self._pipes):
            if pipe.transport is not None:
                pipe.transport.close()
        self._pipes.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
