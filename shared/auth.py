"""Who may talk to the coordinator: role tokens sent as call metadata, agent identities, optional TLS.

Two roles. An **agent** registers, leases jobs, fetches the artifacts of its own jobs and reports
their results (AgentService); a **client** submits campaigns, reads status and reports and uploads
campaign files (CampaignService). Each role has its own token (`--agent-token`, `--client-token`,
or $QFARM_AGENT_TOKEN / $QFARM_CLIENT_TOKEN); one farm token (`--token`, $QFARM_TOKEN) may serve
both, as in the loopback demos. Tokens travel as `authorization: Bearer <token>` and are checked
on the coordinator before any servicer code runs (coordinator/farm/access.py holds the method ->
roles table, coordinator/farm/gate.py checks it), so a refused call changes nothing.

Every agent call after Register also proves which registration it comes from: the agent id and the
random secret the coordinator handed out at registration (`AgentIdentity`, two metadata entries).
The coordinator stores only the secret's SHA-256; a token holder who learns agent or job ids from
status still cannot heartbeat, report or deregister for another agent.

The standard gRPC health service stays open on purpose: probes (systemd, kubelet, load balancers)
need no secret and it reveals only SERVING/NOT_SERVING. Tokens come from a flag, a file or the
environment; TLS files from flags or QFARM_TLS_CA/CERT/KEY. Without TLS tokens and secrets travel
in clear text: use TLS wherever the network is not trusted."""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import ssl
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from shared.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


class Role(str, Enum):
    AGENT = "agent"
    CLIENT = "client"


TOKEN_ENV = "QFARM_TOKEN"                                   # one token for both roles
ROLE_TOKEN_ENV = {Role.AGENT: "QFARM_AGENT_TOKEN", Role.CLIENT: "QFARM_CLIENT_TOKEN"}
TLS_CA_ENV = "QFARM_TLS_CA"
TLS_CERT_ENV = "QFARM_TLS_CERT"
TLS_KEY_ENV = "QFARM_TLS_KEY"
METADATA_KEY = "authorization"
SCHEME = "Bearer "
AGENT_ID_KEY = "qfarm-agent-id"
AGENT_SECRET_KEY = "qfarm-agent-secret"
MIN_TOKEN_CHARS = 16
MIN_TOKEN_DISTINCT = 6          # different characters in a token
MIN_TOKEN_BITS = 32.0           # length x Shannon entropy of its character frequencies
PLACEHOLDER_TOKEN = "change-me-to-a-long-random-string"     # deploy/qfarm.env.example's value
AGENT_SECRET_BYTES = 32         # 256 random bits per registration


# ------------------------------------------------------------------------------------ tokens
def estimated_bits(token: str) -> float:
    """A floor-free guess at a token's strength from its own characters: length times the Shannon
    entropy of their frequencies. Random tokens of 16+ characters score 34+; repeated letters,
    two-letter patterns and the like score far below."""
    counts = collections.Counter(token)
    n = len(token)
    return n * -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def check_token(token: str, source: str) -> str:
    """A usable token: printable ASCII (gRPC metadata), no spaces, long enough, not a repetitive
    pattern, not the example."""
    fix = "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
    if not token:
        raise InvalidArgument(f"the token from {source} is empty", step="auth")
    if not all(33 <= ord(ch) <= 126 for ch in token):
        raise InvalidArgument(f"the token from {source} must be printable ASCII without spaces", step="auth")
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidArgument(f"the token from {source} has {len(token)} characters; use at least "
                              f"{MIN_TOKEN_CHARS} {fix}", step="auth")
    if token == PLACEHOLDER_TOKEN:
        raise InvalidArgument(f"the token from {source} is the placeholder of qfarm.env.example; set a random one",
                              step="auth")
    distinct, bits = len(set(token)), estimated_bits(token)
    if distinct < MIN_TOKEN_DISTINCT or bits < MIN_TOKEN_BITS:
        raise InvalidArgument(f"the token from {source} is too predictable: {distinct} different characters, about "
                              f"{bits:.0f} bits by character frequency (need >= {MIN_TOKEN_DISTINCT} and >= "
                              f"{MIN_TOKEN_BITS:.0f}); use a random one {fix}", step="auth")
    return token


def read_token_file(path: Path, flag: str = "--token-file") -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{flag} {path} cannot be read: {exc}", step="auth") from exc
    if mode & stat.S_IROTH:
        log.warning("token file %s is readable by every user; chmod 600 it", path)
    return check_token(text.strip(), f"{flag} {path}")


def _from_flags(token: str | None, token_file: Path | None, flag: str) -> str | None:
    if token is not None and token_file is not None:
        raise InvalidArgument(f"give either {flag} or {flag}-file, not both", step="auth")
    if token is not None:
        return check_token(token, flag)
    if token_file is not None:
        return read_token_file(token_file, f"{flag}-file")
    return None


def _from_env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return check_token(env[name], f"${name}")
    return None


def resolve_token(token: str | None, token_file: Path | None, env: Mapping[str, str] = os.environ,
                  role: Role | None = None) -> str | None:
    """--token, else --token-file, else $QFARM_<ROLE>_TOKEN (when a role is given), else
    $QFARM_TOKEN, else None (giving both flags is an error)."""
    flags = _from_flags(token, token_file, "--token")
    if flags is not None:
        return flags
    return _from_env(env, *([ROLE_TOKEN_ENV[role]] if role is not None else []), TOKEN_ENV)


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


def token_matches(presented: str | bytes | None, expected: str) -> bool:
    """Constant-time: both sides are hashed first, so neither content nor length leaks by timing."""
    if presented is None:
        return False
    return hmac.compare_digest(_digest(presented), _digest(expected))


def presented_token(metadata: Sequence | None) -> str | bytes | None:
    """The bearer token of a call's metadata; a value in another scheme never matches any token."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            raw = value.decode(errors="replace") if isinstance(value, bytes) else value
            return raw[len(SCHEME):] if raw.startswith(SCHEME) else b"\0" + raw.encode()
    return None


# ------------------------------------------------------------------------------------ agent identity
def hash_secret(secret: str) -> str:
    """What the coordinator stores of an agent secret (the secret is 256 random bits: no KDF needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_agent_secret() -> str:
    return secrets.token_urlsafe(AGENT_SECRET_BYTES)


@dataclass(frozen=True)
class AgentIdentity:
    """A registration's proof: sent with every agent call after Register as two metadata entries."""

    agent_id: str
    secret: str = field(repr=False)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AGENT_ID_KEY, self.agent_id), (AGENT_SECRET_KEY, self.secret))

    def matches(self, secret_hash: str) -> bool:
        return bool(secret_hash) and hmac.compare_digest(hash_secret(self.secret), secret_hash)

    @classmethod
    def from_metadata(cls, metadata: Sequence | None) -> "AgentIdentity | None":
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in (AGENT_ID_KEY, AGENT_SECRET_KEY):
                found[key] = value.decode(errors="replace") if isinstance(value, bytes) else value
        if not found.get(AGENT_ID_KEY) or not found.get(AGENT_SECRET_KEY):
            return None
        return cls(found[AGENT_ID_KEY][:64], found[AGENT_SECRET_KEY][:256])


# ------------------------------------------------------------------------------------ server
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
    """The coordinator's side: role tokens and TLS. `token` serves both roles; `agent_token` and
    `client_token` (both or neither) separate them. Without any token the coordinator may listen
    on loopback only, unless `allow_no_auth` says the network is trusted."""

    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_no_auth: bool = False
    agent_token: str | None = field(default=None, repr=False)
    client_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token, "the coordinator's configuration")
        if self.token is not None and (self.agent_token is not None or self.client_token is not None):
            raise InvalidArgument("give either one farm token (--token) or separate --agent-token and --client-token, "
                                  "not both", step="auth")
        if (self.agent_token is None) != (self.client_token is None):
            missing = "--client-token" if self.client_token is None else "--agent-token"
            raise InvalidArgument(f"separate role tokens need both --agent-token and --client-token: {missing} is "
                                  f"missing (or give one farm token with --token)", step="auth")
        for role, value in ((Role.AGENT, self.agent_token), (Role.CLIENT, self.client_token)):
            if value is not None:
                check_token(value, f"the coordinator's {role.value} token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key", step="tls")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def role_tokens(self) -> dict[Role, str] | None:
        """Each role's token; None: no token required (loopback or --no-auth)."""
        if self.token is not None:
            return {Role.AGENT: self.token, Role.CLIENT: self.token}
        if self.agent_token is not None:
            return {Role.AGENT: self.agent_token, Role.CLIENT: self.client_token}   # type: ignore[dict-item]
        return None

    def token_of(self, role: Role) -> str | None:
        """The token `role` must present (None: no token required)."""
        tokens = self.role_tokens
        return None if tokens is None else tokens[role]

    @property
    def separate_roles(self) -> bool:
        tokens = self.role_tokens
        return tokens is not None and tokens[Role.AGENT] != tokens[Role.CLIENT]

    def roles_of(self, presented: str | bytes | None) -> frozenset[Role]:
        """The roles a presented token grants (every role when no token is required). Every role's
        token is compared, in constant time, whatever matched first."""
        digests = self._role_digests
        if digests is None:
            return frozenset(Role)
        if presented is None:
            return frozenset()
        digest = _digest(presented)       # hashed once per call, compared with each role's, constant-time
        return frozenset([role for role, expected in digests.items() if hmac.compare_digest(digest, expected)])

    @functools.cached_property
    def _role_digests(self) -> dict[Role, bytes] | None:
        """The SHA-256 of each role's token, computed once (token_matches hashes both sides per call)."""
        tokens = self.role_tokens
        return None if tokens is None else {role: _digest(token) for role, token in tokens.items()}

    def check_exposure(self, host: str) -> None:
        if self.role_tokens is None and not self.allow_no_auth and not is_loopback(host):
            raise FailedPrecondition(
                f"refusing to listen on {host} without a token: anyone who can reach it could run code on your "
                f"agents. Set --token-file/${TOKEN_ENV} (or --agent-token-file and --client-token-file), listen on "
                "127.0.0.1, or pass --no-auth on a trusted network", step="serve")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials (None: plaintext), after checking that the key belongs to the certificate."""
        if not self.tls:
            return None
        key, cert = _read_pem(self.tls_key, "--tls-key"), _read_pem(self.tls_cert, "--tls-cert")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as exc:
            why = "does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else f"cannot be used ({exc})"
            raise InvalidArgument(f"--tls-key {self.tls_key} {why} in --tls-cert {self.tls_cert}", step="tls") from None
        return grpc.ssl_server_credentials([(key, cert)])


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


def add_client_arguments(p: argparse.ArgumentParser, role: Role = Role.CLIENT) -> None:
    """--token/--token-file/--tls-ca for agents and clients."""
    env = f"${ROLE_TOKEN_ENV[role]} or ${TOKEN_ENV}"
    p.add_argument("--token", default=None, help=f"the {role.value} token (prefer --token-file or {env}: "
                   "command lines are visible to other users)")
    p.add_argument("--token-file", type=Path, default=None, help=f"file holding the {role.value} token")
    p.add_argument("--tls-ca", type=Path, default=None,
                   help=f"CA certificate (PEM) that signed the coordinator's; enables TLS (or ${TLS_CA_ENV})")


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=None, help=f"one farm token for agents and clients alike (prefer --token-file "
                   f"or ${TOKEN_ENV})")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the farm token")
    for role in Role:
        p.add_argument(f"--{role.value}-token", default=None,
                       help=f"separate token of the {role.value} role (prefer the file or ${ROLE_TOKEN_ENV[role]})")
        p.add_argument(f"--{role.value}-token-file", type=Path, default=None,
                       help=f"file holding the {role.value} token")
    p.add_argument("--tls-cert", type=Path, default=None, help=f"server certificate chain, PEM (or ${TLS_CERT_ENV})")
    p.add_argument("--tls-key", type=Path, default=None, help=f"server private key, PEM (or ${TLS_KEY_ENV})")
    p.add_argument("--no-auth", action="store_true",
                   help="allow listening on a non-loopback address without a token (trusted networks only)")


def credentials_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ,
                          role: Role = Role.CLIENT) -> Credentials:
    token = resolve_token(getattr(args, "token", None), getattr(args, "token_file", None), env, role)
    return Credentials(token=token, tls_ca=getattr(args, "tls_ca", None) or _env_path(env, TLS_CA_ENV))


def server_security_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ServerSecurity:
    """Each role's token: its own flag, else --token, else $QFARM_<ROLE>_TOKEN, else $QFARM_TOKEN.
    Equal tokens make one farm token for both roles."""
    farm = _from_flags(args.token, args.token_file, "--token")
    tokens = {}
    for role in Role:
        own = _from_flags(getattr(args, f"{role.value}_token"), getattr(args, f"{role.value}_token_file"),
                          f"--{role.value}-token")
        tokens[role] = own or farm or _from_env(env, ROLE_TOKEN_ENV[role], TOKEN_ENV)
    tls = {"tls_cert": args.tls_cert or _env_path(env, TLS_CERT_ENV),
           "tls_key": args.tls_key or _env_path(env, TLS_KEY_ENV), "allow_no_auth": args.no_auth}
    if tokens[Role.AGENT] is not None and tokens[Role.AGENT] == tokens[Role.CLIENT]:
        return ServerSecurity(token=tokens[Role.AGENT], **tls)
    return ServerSecurity(agent_token=tokens[Role.AGENT], client_token=tokens[Role.CLIENT], **tls)
