"""meshd-client: talk to a local meshd over its gRPC Unix socket.

    async with await MeshClient.connect(app="chat") as client:
        message_id = await client.send(address, b"hello")
        await client.wait_delivered(message_id, timeout=30)

The raw generated stubs are in ``meshd_client.v1`` (``node_pb2``, ``messaging_pb2`` ...).
"""

from __future__ import annotations

from meshd_client.client import (
    DeliveryFailed,
    MeshClient,
    MeshClientError,
    default_socket_path,
)

__all__ = ["DeliveryFailed", "MeshClient", "MeshClientError", "default_socket_path"]
