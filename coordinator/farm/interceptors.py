"""gRPC server interceptors of the coordinator (the token check lives in shared/auth.py): requests
whose bytes are not a protobuf of their method's type are refused as INVALID_ARGUMENT, naming the
method, instead of gRPC's generic INTERNAL "Exception deserializing request!"."""
from __future__ import annotations

import grpc

from shared.errors import InvalidArgument


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can refuse it by name."""

    def __init__(self, error: str):
        self.error = error


class MalformedRequests(grpc.ServerInterceptor):
    """A request that is not a valid protobuf of its method's type is answered INVALID_ARGUMENT,
    naming the method, instead of gRPC's generic INTERNAL "Exception deserializing request!"."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _guarded(handler, handler_call_details.method)


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    def safe_parse(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's malformed request
            return _Malformed(f"{type(exc).__name__}: {str(exc)[:200]}")

    def message(bad: _Malformed) -> str:
        return f"malformed {method} request ({bad.error})"

    def checked(requests):      # raised inside the servicer's loop: its error mapping answers INVALID_ARGUMENT
        for request in requests:
            if isinstance(request, _Malformed):
                raise InvalidArgument(message(request), step="input")
            yield request

    kind = (handler.request_streaming, handler.response_streaming)
    inner = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
             (True, False): handler.stream_unary, (True, True): handler.stream_stream}[kind]
    if handler.request_streaming:
        def behaviour(requests, context):
            return inner(checked(requests), context)
    else:
        def behaviour(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input: {message(request)}")
            return inner(request, context)
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[kind]
    return make(behaviour, request_deserializer=safe_parse, response_serializer=handler.response_serializer)
