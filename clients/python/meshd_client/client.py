"""``MeshClient``: a small asyncio wrapper over the meshd.v1 gRPC API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType

import grpc
from google.protobuf.duration_pb2 import Duration

from meshd_client.v1 import messaging_pb2 as mpb
from meshd_client.v1 import messaging_pb2_grpc as mgrpc
from meshd_client.v1 import node_pb2 as npb
from meshd_client.v1 import node_pb2_grpc as ngrpc

APP_METADATA_KEY = "meshd-app"
_FINAL = (mpb.DELIVERY_STATE_DELIVERED, mpb.DELIVERY_STATE_FAILED)


class MeshClientError(Exception):
    """meshd cannot be reached, or refused a request (``code`` is the gRPC status name)."""

    def __init__(self, message: str, *, code: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.code = code


class DeliveryFailed(MeshClientError):
    """The message reached the FAILED state; ``reason`` says why."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"message {message_id} failed: {reason or 'no reason given'}",
                         code="FAILED_PRECONDITION")  # fmt: skip
        self.message_id = message_id
        self.reason = reason


def default_socket_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """``$MESHD_SOCKET``, else ``/run/meshd/meshd.sock`` as root, else
    ``$XDG_RUNTIME_DIR/meshd/meshd.sock`` (the daemon's own rule)."""
    e = os.environ if env is None else env
    if e.get("MESHD_SOCKET"):
        return e["MESHD_SOCKET"]
    u = os.geteuid() if uid is None else uid
    if u == 0:
        return "/run/meshd/meshd.sock"
    runtime = e.get("XDG_RUNTIME_DIR") or f"/run/user/{u}"
    return os.path.join(runtime, "meshd", "meshd.sock")


def _translate(exc: grpc.aio.AioRpcError) -> MeshClientError:
    return MeshClientError(exc.details() or exc.code().name, code=exc.code().name)


def _request(dst: str, payload: bytes | str, lifetime: float | None) -> mpb.SendMessageRequest:
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    req = mpb.SendMessageRequest(dst=dst, payload=data)
    if lifetime is not None:
        req.lifetime.CopyFrom(Duration(seconds=int(lifetime), nanos=int(lifetime % 1 * 1e9)))
    return req


class MeshClient:
    """One connection to meshd, acting as one application id."""

    def __init__(self, channel: grpc.aio.Channel, *, app: str, socket_path: str) -> None:
        self._channel = channel
        self._metadata = ((APP_METADATA_KEY, app),)
        self.app = app
        self.socket_path = socket_path
        self.node = ngrpc.NodeServiceStub(channel)
        self.messaging = mgrpc.MessagingServiceStub(channel)

    @classmethod
    async def connect(
        cls,
        socket: str | None = None,
        *,
        app: str = "default",
        timeout: float = 5.0,  # noqa: ASYNC109 - the documented API; applied to readiness only
    ) -> MeshClient:
        """Open a channel to meshd's Unix socket and wait until it is ready."""
        path = socket or default_socket_path()
        channel = grpc.aio.insecure_channel(f"unix:{path}")
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            await channel.close()
            raise MeshClientError(f"cannot connect to meshd at {path}: is meshd running?") from None
        return cls(channel, app=app, socket_path=path)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def status(self) -> npb.GetStatusResponse:
        try:
            resp: npb.GetStatusResponse = await self.node.GetStatus(
                npb.GetStatusRequest(), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return resp

    async def send(
        self, dst: str, payload: bytes | str, *, lifetime: float | None = None
    ) -> str:
        """Queue a message (stored durably by meshd when this returns); its id, hex."""
        return (await self.send_detailed(dst, payload, lifetime=lifetime)).message_id

    async def send_detailed(
        self, dst: str, payload: bytes | str, *, lifetime: float | None = None
    ) -> mpb.SendMessageResponse:
        req = _request(dst, payload, lifetime)
        try:
            resp: mpb.SendMessageResponse = await self.messaging.SendMessage(
                req, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return resp

    async def send_many(
        self,
        messages: Iterable[tuple[str, bytes | str]] | AsyncIterable[tuple[str, bytes | str]],
        *,
        lifetime: float | None = None,
    ) -> list[mpb.SendMessageResponse]:
        """Queue many (dst, payload) messages on one SendMessages stream, many in flight.

        One response per message, in order, each once meshd stored it durably. A message
        meshd refused has ``error_code`` (gRPC status name) and ``error_detail`` set and
        no ``message_id``; the others are queued regardless.
        """

        async def requests() -> AsyncIterator[mpb.SendMessageRequest]:
            if isinstance(messages, AsyncIterable):
                async for dst, payload in messages:
                    yield _request(dst, payload, lifetime)
            else:
                for dst, payload in messages:
                    yield _request(dst, payload, lifetime)

        responses: list[mpb.SendMessageResponse] = []
        try:
            call = self.messaging.SendMessages(requests(), metadata=self._metadata)
            async for resp in call:
                responses.append(resp)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return responses

    async def get_message(self, message_id: str) -> mpb.Message:
        try:
            msg: mpb.Message = await self.messaging.GetMessage(
                mpb.GetMessageRequest(message_id=message_id), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return msg

    async def history(self, *, peer: str | None = None, limit: int = 50) -> list[mpb.Message]:
        try:
            resp: mpb.ListHistoryResponse = await self.messaging.ListHistory(
                mpb.ListHistoryRequest(peer=peer or "", limit=limit), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        return list(resp.messages)

    async def events(
        self, after_cursor: int | None = None
    ) -> AsyncGenerator[mpb.Event, None]:
        """This app's events: stored ones after ``after_cursor`` first, then live ones.

        Keep the last ``event.cursor`` you handled and pass it back after a restart.
        """
        req = mpb.SubscribeRequest()
        if after_cursor is not None:
            req.after_cursor = after_cursor
        call = self.messaging.Subscribe(req, metadata=self._metadata)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from None
        finally:
            call.cancel()

    async def wait_delivered(
        self,
        message_id: str,
        timeout: float,  # noqa: ASYNC109 - the documented API (wait_delivered(id, timeout))
        *,
        after_cursor: int | None = None,
    ) -> mpb.DeliveryStateChanged:
        """Wait for DELIVERED; raises ``DeliveryFailed`` on FAILED, ``TimeoutError`` on timeout.

        ``after_cursor`` (e.g. ``send_detailed(...).cursor - 1``) skips older events.
        """
        async with asyncio.timeout(timeout):
            msg = await self.get_message(message_id)
            if msg.state in _FINAL:  # already final: the events may be long gone
                change = mpb.DeliveryStateChanged(
                    message_id=message_id, dst=msg.peer, state=msg.state, reason=msg.reason
                )
            else:
                # msg.cursor recorded the message: every later state change follows it.
                start = after_cursor if after_cursor is not None else (msg.cursor or None)
                change = await self._next_final(message_id, start)
        if change.state == mpb.DELIVERY_STATE_FAILED:
            raise DeliveryFailed(message_id, change.reason)
        return change

    async def _next_final(
        self, message_id: str, after_cursor: int | None
    ) -> mpb.DeliveryStateChanged:
        async for event in self.events(after_cursor):
            if event.WhichOneof("kind") != "delivery_state":
                continue
            change = event.delivery_state
            if change.message_id == message_id and change.state in _FINAL:
                return change
        raise MeshClientError("meshd closed the event stream", code="UNAVAILABLE")
