"""The dashboard's credentials are the gRPC API's: with a token configured, every request needs it,
as `Authorization: Bearer TOKEN` (scripts, Prometheus) or as the session cookie the login form sets
(browsers; the cookie holds an HMAC of the token, never the token). Without a token the dashboard,
like gRPC, may listen on loopback only (checked when it starts)."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from shared.auth import token_matches

COOKIE = "qfarm_session"
_SESSION_CONTEXT = b"qfarm dashboard session v1"


@dataclass(frozen=True)
class HttpAuth:
    token: str | None = field(default=None, repr=False)

    @property
    def required(self) -> bool:
        return self.token is not None

    def session_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def check(self, authorization: str | None, cookie: str | None) -> str:
        """'' when the request may pass, else why not ('no token' / 'wrong token')."""
        if self.token is None:
            return ""
        if authorization:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return "wrong token"
            return "" if token_matches(presented.strip(), self.token) else "wrong token"
        if cookie:
            return "" if hmac.compare_digest(cookie.encode(), self.session_value().encode()) else "wrong token"
        return "no token"

    def login(self, presented: str) -> bool:
        return self.token is not None and token_matches(presented, self.token)
