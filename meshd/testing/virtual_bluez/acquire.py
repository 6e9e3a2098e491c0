"""AcquireWrite / AcquireNotify: a SOCK_SEQPACKET pair, one end handed to the client.

BlueZ (doc/org.bluez.GattCharacteristic.rst) passes a socket whose packets are whole
attribute values: for AcquireWrite, each packet the client writes is a Write Command; for
AcquireNotify, each notification arrives as one packet. Closing the socket releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable


class AcquiredSocket:
    """Our end of an acquired socket; ``take_client_fd()`` goes into the method reply.

    Our copy of the client's end must be closed once the reply carrying it is written
    (node.HandoffBus does that), so that the client's close shows up here as end-of-file:
    that is how a release is seen.
    """

    def __init__(
        self,
        *,
        packet_size: int,
        on_packet: Callable[[bytes], None] | None,
        on_close: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._sock: socket.socket | None = ours
        self._client_fd: int | None = theirs.detach()
        self._packet_size = packet_size
        self._on_packet = on_packet
        self._on_close = on_close
        self._loop.add_reader(ours.fileno(), self._readable)

    def take_client_fd(self) -> int:
        """The client's end, once; whoever takes it closes it."""
        fd, self._client_fd = self._client_fd, None
        if fd is None:
            raise RuntimeError("client end already taken")
        return fd

    @property
    def open(self) -> bool:
        return self._sock is not None

    def send(self, data: bytes) -> bool:
        """One notification; False (and released) if the client has gone."""
        if self._sock is None:
            return False
        try:
            self._sock.send(data[: self._packet_size])
        except BlockingIOError:
            return True  # the client is not reading: like the radio, drop this one
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(ValueError, RuntimeError):
            self._loop.remove_reader(sock.fileno())
        sock.close()
        self._close_client_copy()
        self._on_close()

    def _close_client_copy(self) -> None:
        fd, self._client_fd = self._client_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _readable(self) -> None:
        if self._sock is None:
            return
        try:
            # recv truncates a longer packet to what one ATT Write Command carries.
            data = self._sock.recv(self._packet_size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the client released it (an empty write is useless)
            self.close()
        elif self._on_packet is not None:
            self._on_packet(data)
