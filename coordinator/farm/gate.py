"""The coordinator's gate, in front of every method handler (wrapped once, when the services are
added to the server, so a call pays for no interceptor chain):

1. **who**: the call's token must grant a role the method allows (access.py's table): none is
   UNAUTHENTICATED, the other role's token PERMISSION_DENIED, and nothing changes. Services are
   registered only through the gate; a method missing from the table is refused (fail closed).
2. **how many**: the call takes a slot of its pool, overall and for its peer address; a full pool
   is RESOURCE_EXHAUSTED naming the limit, at once, instead of a queue. Slots are counters on the
   event loop, not threads: a waiting call costs nothing but its slot.
3. **how long**: open calls (health watches) are cut after `max_stream_s`; artifact streams are
   bounded by the servicer itself (idle and total time, server.py).
4. **what**: a request that is not a protobuf of its method's type is INVALID_ARGUMENT naming the
   method, instead of gRPC's generic INTERNAL "Exception deserializing request!"."""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from typing import Any, Callable, Mapping

import grpc

from coordinator.farm.access import ACCESS, Access, Pool
from shared.auth import ServerSecurity, presented_token
from shared.errors import InvalidArgument
from shared.limits import Limits

log = logging.getLogger(__name__)

_REFUSAL_LOG_EVERY_S = 60.0
_MISSING_TOKEN = ("missing token: this coordinator requires a token (--token, --token-file or $QFARM_TOKEN; "
                  "$QFARM_AGENT_TOKEN / $QFARM_CLIENT_TOKEN with separate roles)")


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.5:51234" -> "ipv4:10.0.0.5")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


class CallLimiter:
    """Calls in progress per pool, overall and per peer address. Used on the event loop only."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._total: Counter[Pool] = Counter()
        self._per_peer: Counter[tuple[Pool, str]] = Counter()

    def enter(self, pool: Pool, peer: str) -> str | None:
        """Take a slot; None when granted, else why not (naming the limit)."""
        overall, per_peer = pool.limits
        total_cap, peer_cap = getattr(self.limits, overall), getattr(self.limits, per_peer)
        if self._total[pool] >= total_cap:
            return f"{self._total[pool]} {pool.value}s are in progress, the limit {overall}={total_cap}"
        if self._per_peer[pool, peer] >= peer_cap:
            return (f"{self._per_peer[pool, peer]} {pool.value}s from {peer} are in progress, the limit "
                    f"{per_peer}={peer_cap}")
        self._total[pool] += 1
        self._per_peer[pool, peer] += 1
        return None

    def leave(self, pool: Pool, peer: str) -> None:
        self._total[pool] -= 1
        self._per_peer[pool, peer] -= 1
        if not self._per_peer[pool, peer]:
            del self._per_peer[pool, peer]

    def in_progress(self, pool: Pool) -> int:
        return self._total[pool]


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the call can be refused by name."""

    def __init__(self, error: str):
        self.error = error


class Gate:
    def __init__(self, security: ServerSecurity, limits: Limits):
        self.security = security
        self.limits = limits
        self.calls = CallLimiter(limits)
        self._logged: dict[tuple[str, str], float] = {}

    def register(self, server: grpc.aio.Server, add_servicer: Callable[[Any, Any], None], servicer: Any) -> None:
        """`add_XServicer_to_server(servicer, server)`, with every method handler behind the gate."""
        add_servicer(servicer, _GatedServer(server, self))

    def refusal(self, access: Access, metadata) -> tuple[grpc.StatusCode, str] | None:
        """Why the call's token may not call a method of `access` (None: it may)."""
        if not access.roles:
            return None
        presented = presented_token(metadata)
        roles = self.security.roles_of(presented)
        if not roles:
            return grpc.StatusCode.UNAUTHENTICATED, f"auth: {_MISSING_TOKEN if presented is None else 'wrong token'}"
        if not roles & access.roles:
            allowed = " or ".join(sorted(r.value for r in access.roles))
            held = " and ".join(sorted(r.value for r in roles))
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"permission: this method is for the {allowed} role; this token is the {held} token")
        return None

    def log_refusal(self, peer: str, method: str, why: str) -> None:
        """One warning per peer and reason a minute: a flood of refused calls must not flood the log."""
        key, now = (peer, why), time.monotonic()
        if now - self._logged.get(key, -_REFUSAL_LOG_EVERY_S) >= _REFUSAL_LOG_EVERY_S:
            self._logged[key] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            log.warning("refused %s from %s: %s", method, peer, why)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler behind the gate: token and role, a concurrency slot, the parse check."""
        access = ACCESS.get(method)
        parse = handler.request_deserializer
        calls, gate = self.calls, self
        deadline = self.limits.max_stream_s if access is not None and access.pool == Pool.OPEN else None

        def safe_parse(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's malformed request
                return _Malformed(f"{type(exc).__name__}: {str(exc)[:200]}")

        def message(bad: _Malformed) -> str:
            return f"malformed {method} request ({bad.error})"

        async def checked(requests):     # raised inside the servicer's loop: its error mapping answers it
            async for request in requests:
                if isinstance(request, _Malformed):
                    raise InvalidArgument(message(request), step="input")
                yield request

        inner = _behaviour(handler)

        async def admit(request, context) -> str:
            peer = peer_host(context.peer())
            refused = (grpc.StatusCode.PERMISSION_DENIED, f"permission: {method} has no access rule") \
                if access is None else gate.refusal(access, context.invocation_metadata())
            if refused is not None:
                gate.log_refusal(peer, method, refused[1])
                await context.abort(*refused)
            why = calls.enter(access.pool, peer)
            if why is not None:
                gate.log_refusal(peer, method, why)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"limits: {why}")
            if isinstance(request, _Malformed):
                calls.leave(access.pool, peer)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input: {message(request)}")
            return peer

        def arguments(request):
            return checked(request) if handler.request_streaming else request

        if inspect.isasyncgenfunction(inner):
            async def behaviour(request, context):
                peer = await admit(request, context)
                try:
                    async for item in inner(arguments(request), context):
                        yield item
                finally:
                    calls.leave(access.pool, peer)
        else:
            async def behaviour(request, context):
                peer = await admit(request, context)
                try:
                    if deadline is None:
                        return await inner(arguments(request), context)
                    try:
                        async with asyncio.timeout(deadline):
                            return await inner(arguments(request), context)
                    except TimeoutError:
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                            f"limits: {method} cut after {deadline} s, the limit max_stream_s")
                finally:
                    calls.leave(access.pool, peer)
        return _rebuild(handler, behaviour, safe_parse if parse is not None else None)


class _GatedServer:
    """What a generated `add_XServicer_to_server` sees: its method handlers reach the real server
    only wrapped by the gate (the unwrapped generic handler it also offers is dropped)."""

    def __init__(self, server: grpc.aio.Server, gate: Gate):
        self._server, self._gate = server, gate

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        """Dropped: the same methods arrive wrapped through `add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: self._gate.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
            (True, False): handler.stream_unary, (True, True): handler.stream_stream}[
        (handler.request_streaming, handler.response_streaming)]


def _rebuild(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any], deserializer) -> grpc.RpcMethodHandler:
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[(handler.request_streaming,
                                                                  handler.response_streaming)]
    return make(behaviour, request_deserializer=deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)
