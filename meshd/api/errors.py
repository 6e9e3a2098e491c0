"""The one place where meshd errors become gRPC statuses (a server interceptor).

``MeshdError.code`` names the canonical status and ``str(error)`` starts with the field
at fault ("dst: checksum mismatch ..."). Anything else is a bug: it is logged with its
traceback and the caller gets INTERNAL; the daemon keeps running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from meshd.errors import MeshdError

_INTERNAL_DETAIL = "internal error in meshd (details in the daemon's log)"


def status_code(error: MeshdError) -> grpc.StatusCode:
    """The canonical status for ``error.code``; INTERNAL for a name gRPC does not know."""
    try:
        code: grpc.StatusCode = grpc.StatusCode[error.code]
    except KeyError:
        return grpc.StatusCode.INTERNAL
    return code if code is not grpc.StatusCode.OK else grpc.StatusCode.INTERNAL


def status_detail(error: MeshdError) -> str:
    return str(error)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every unary, server-streaming and bidi handler with the error mapping."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger) -> None:
        self._log = log
        # Wrapped handlers per (method, handler): built once, not on every call.
        self._wrapped: dict[tuple[str, int], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        key = (method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            if len(self._wrapped) > 1024:  # handlers made per call: do not grow forever
                self._wrapped.clear()
            wrapped = self._wrapped[key] = self._wrap(method, handler)
        return wrapped

    def registrar(self, server: Any) -> ErrorMappedRegistrar:
        """A stand-in for ``server`` to give the generated ``add_*_to_server``: it wraps
        each handler once, at registration, so calls take gRPC's path without
        interceptors (``intercept_service`` is a coroutine awaited on every call)."""
        return ErrorMappedRegistrar(server, self._wrap)

    def _wrap(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # SendMessages: same mapping as a stream
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: meshd defines none yet

    def _wrap_unary(
        self, method: str, behaviour: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def wrapped(request: Any, context: Any) -> Any:
            try:
                return await behaviour(request, context)
            except MeshdError as exc:
                await context.abort(status_code(exc), status_detail(exc))
            except grpc.aio.AbortError:
                raise
            except Exception:
                self._log.exception("api_call_failed", method=method)
                await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_DETAIL)

        return wrapped

    def _wrap_stream(
        self, method: str, behaviour: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in behaviour(request, context):
                    yield item
            except MeshdError as exc:
                await context.abort(status_code(exc), status_detail(exc))
            except grpc.aio.AbortError:
                raise
            except Exception:
                self._log.exception("api_call_failed", method=method)
                await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_DETAIL)

        return wrapped


class ErrorMappedRegistrar:
    """Forwards the generated code's registrations to a server, each handler wrapped."""

    def __init__(self, server: Any, wrap: Callable[[str, Any], Any]) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._wrap) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service,
            {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()},
        )


class _WrappedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """``inner``'s handlers, wrapped once per method (then looked up in a dict)."""

    def __init__(self, inner: Any, wrap: Callable[[str, Any], Any]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            if len(self._wrapped) > 1024:  # method names come from callers: bounded
                self._wrapped.clear()
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped
