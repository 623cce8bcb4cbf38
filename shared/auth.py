"""Who may talk to the coordinator: a shared farm token sent as call metadata, and optional TLS.

The coordinator checks `authorization: Bearer <token>` on every call in a server interceptor,
before any servicer code runs, so a refused call changes nothing. The standard gRPC health
service stays open on purpose: probes (systemd, load balancers) need no secret, and it reveals
only SERVING/NOT_SERVING. Agents and clients add the token to each call with a client
interceptor, the same way over plaintext and TLS. Tokens come from a flag, a file or the
environment (`QFARM_TOKEN`); TLS files from flags or `QFARM_TLS_CA/CERT/KEY`.

The token travels in clear text without TLS: use TLS wherever the network is not trusted."""
from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from shared.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

TOKEN_ENV = "QFARM_TOKEN"
TLS_CA_ENV = "QFARM_TLS_CA"
TLS_CERT_ENV = "QFARM_TLS_CERT"
TLS_KEY_ENV = "QFARM_TLS_KEY"
METADATA_KEY = "authorization"
SCHEME = "Bearer "
MIN_TOKEN_CHARS = 16
PLACEHOLDER_TOKEN = "change-me-to-a-long-random-string"     # deploy/qfarm.env.example's value
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)


# ------------------------------------------------------------------------------------ tokens
def check_token(token: str, source: str) -> str:
    """A usable token: printable ASCII (gRPC metadata), no spaces, long enough, not the example."""
    if not token:
        raise InvalidArgument(f"the token from {source} is empty", step="auth")
    if not all(33 <= ord(ch) <= 126 for ch in token):
        raise InvalidArgument(f"the token from {source} must be printable ASCII without spaces", step="auth")
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidArgument(f"the token from {source} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                              "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)", step="auth")
    if token == PLACEHOLDER_TOKEN:
        raise InvalidArgument(f"the token from {source} is the placeholder of qfarm.env.example; set a random one",
                              step="auth")
    return token


def read_token_file(path: Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"--token-file {path} cannot be read: {exc}", step="auth") from exc
    if mode & stat.S_IROTH:
        log.warning("token file %s is readable by every user; chmod 600 it", path)
    return check_token(text.strip(), f"--token-file {path}")


def resolve_token(token: str | None, token_file: Path | None,
                  env: Mapping[str, str] = os.environ) -> str | None:
    """--token, else --token-file, else $QFARM_TOKEN, else None (giving both flags is an error)."""
    if token is not None and token_file is not None:
        raise InvalidArgument("give either --token or --token-file, not both", step="auth")
    if token is not None:
        return check_token(token, "--token")
    if token_file is not None:
        return read_token_file(token_file)
    if env.get(TOKEN_ENV):
        return check_token(env[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


def token_matches(presented: str | bytes | None, expected: str) -> bool:
    """Constant-time: both sides are hashed first, so neither content nor length leaks by timing."""
    if presented is None:
        return False
    return hmac.compare_digest(_digest(presented), _digest(expected))


# ------------------------------------------------------------------------------------ server
def _presented_token(metadata: Sequence | None) -> str | bytes | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            raw = value.decode(errors="replace") if isinstance(value, bytes) else value
            return raw[len(SCHEME):] if raw.startswith(SCHEME) else b"\0" + raw.encode()  # wrong scheme never matches
    return None


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call without the farm token with UNAUTHENTICATED, before the servicer runs.
    A refused request is not even deserialized."""

    def __init__(self, token: str):
        self._token = check_token(token, "the coordinator's configuration")

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(OPEN_SERVICE_PREFIXES):
            return continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        if token_matches(presented, self._token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:               # unknown method: UNIMPLEMENTED, as without auth
            return None
        why = ("missing token: this coordinator requires the farm token (--token, --token-file or "
               f"${TOKEN_ENV})") if presented is None else "wrong token"
        return _refusal(handler, method, why)


def _refusal(handler: grpc.RpcMethodHandler, method: str, why: str) -> grpc.RpcMethodHandler:
    def refuse(request, context):
        log.warning("refused %s from %s: %s", method, context.peer(), why)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"auth: {why}")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{what} {path} cannot be read: {exc}", step="tls") from exc
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{what} {path} is not a PEM file", step="tls")
    return data


@dataclass(frozen=True)
class ServerSecurity:
    """The coordinator's side: token check and TLS. Without a token it may listen on loopback
    only, unless `allow_no_auth` says the network is trusted."""

    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_no_auth: bool = False

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token, "the coordinator's configuration")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key", step="tls")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def interceptors(self) -> tuple[grpc.ServerInterceptor, ...]:
        return () if self.token is None else (TokenInterceptor(self.token),)

    def check_exposure(self, host: str) -> None:
        if self.token is None and not self.allow_no_auth and not is_loopback(host):
            raise FailedPrecondition(
                f"refusing to listen on {host} without a token: anyone who can reach it could run code on your "
                f"agents. Set --token-file/${TOKEN_ENV}, listen on 127.0.0.1, or pass --no-auth on a trusted "
                "network", step="serve")

    def bind(self, server: grpc.Server, address: str) -> int:
        """Add the listening port (TLS when configured); returns the bound port (0: failed)."""
        if not self.tls:
            return server.add_insecure_port(address)
        creds = grpc.ssl_server_credentials([(_read_pem(self.tls_key, "--tls-key"),
                                              _read_pem(self.tls_cert, "--tls-cert"))])
        return server.add_secure_port(address, creds)


# ------------------------------------------------------------------------------------ clients
class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call of the channel it wraps."""

    def __init__(self, token: str):
        self._entry = (METADATA_KEY, SCHEME + token)

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0] != METADATA_KEY] + [self._entry]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class Credentials:
    """An agent's or client's side: the token to send and the CA that signed the coordinator's
    certificate (None: plaintext)."""

    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token, "the client's configuration")

    def channel(self, address: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        if self.tls_ca is None:
            channel = grpc.insecure_channel(address, options=list(options))
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=_read_pem(self.tls_ca, "--tls-ca"))
            channel = grpc.secure_channel(address, creds, options=list(options))
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, _TokenClientInterceptor(self.token))

    def hint(self) -> str:
        """What to check when the coordinator cannot be reached."""
        if self.tls_ca is None:
            return f"if the coordinator uses TLS, pass --tls-ca (or ${TLS_CA_ENV})"
        return f"TLS with CA {self.tls_ca}: check that it signed the coordinator's certificate for this address"


# ------------------------------------------------------------------------------------ command line
def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]) if env.get(name) else None


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    """--token/--token-file/--tls-ca for agents and clients."""
    p.add_argument("--token", default=None, help=f"farm token (prefer --token-file or ${TOKEN_ENV}: "
                   "command lines are visible to other users)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the farm token")
    p.add_argument("--tls-ca", type=Path, default=None,
                   help=f"CA certificate (PEM) that signed the coordinator's; enables TLS (or ${TLS_CA_ENV})")


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=None, help=f"farm token every call must carry (prefer --token-file or "
                   f"${TOKEN_ENV})")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the farm token")
    p.add_argument("--tls-cert", type=Path, default=None, help=f"server certificate chain, PEM (or ${TLS_CERT_ENV})")
    p.add_argument("--tls-key", type=Path, default=None, help=f"server private key, PEM (or ${TLS_KEY_ENV})")
    p.add_argument("--no-auth", action="store_true",
                   help="allow listening on a non-loopback address without a token (trusted networks only)")


def credentials_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Credentials:
    return Credentials(token=resolve_token(getattr(args, "token", None), getattr(args, "token_file", None), env),
                       tls_ca=getattr(args, "tls_ca", None) or _env_path(env, TLS_CA_ENV))


def server_security_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ServerSecurity:
    return ServerSecurity(token=resolve_token(args.token, args.token_file, env),
                          tls_cert=args.tls_cert or _env_path(env, TLS_CERT_ENV),
                          tls_key=args.tls_key or _env_path(env, TLS_KEY_ENV), allow_no_auth=args.no_auth)
