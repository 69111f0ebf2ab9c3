"""``AdminGuard``: who may call the admin API.

kairos-rs's admin API answers anyone, including ``GET /api/config`` with the JWT secret in it.
Here every admin request needs ``Authorization: Bearer <KAIROS_ADMIN_TOKEN>``, compared in
constant time. With no token configured the API answers only requests from the machine itself:
a loopback peer that carries no ``X-Forwarded-For``/``Forwarded`` header (a reverse proxy on the
same host forwarding outside traffic would otherwise look local). Browsers cannot set headers on a
WebSocket, so a stream may pass the token as ``?token=`` instead (our access log never records
query strings).
"""

from __future__ import annotations

import hmac
import ipaddress
import uuid
from urllib.parse import parse_qsl

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject

_FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class AdminGuard:
    def __init__(self, app: ASGIApp, token: SecretStr | str | None) -> None:
        self.app = app
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._token = secret.encode() if secret else None

    @property
    def token_required(self) -> bool:
        return self._token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        kind, message = refusal
        headers = [(b"www-authenticate", b'Bearer realm="kairos-admin"')] if kind.startswith("auth") else []
        await reject(scope, send, kind, message, str(uuid.uuid4()), headers)

    def refusal(self, scope: Scope) -> tuple[str, str] | None:
        """None when the request may pass, else (error type, message)."""
        headers = scope.get("headers") or ()
        if self._token is None:
            client = scope.get("client")
            forwarded = any(name in _FORWARDING_HEADERS for name, _ in headers)
            if client and is_loopback(client[0]) and not forwarded:
                return None
            return (
                "authorization_error",
                "the admin API answers only local clients: set KAIROS_ADMIN_TOKEN to use it remotely",
            )
        presented = _bearer(headers)
        if presented is None and scope["type"] == "websocket":
            presented = (
                dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("token", "").encode()
            )
        if not presented:
            return "authentication_error", "admin API: missing `Authorization: Bearer <token>`"
        if not hmac.compare_digest(presented, self._token):
            return "authentication_error", "admin API: invalid token"
        return None


def _bearer(headers: object) -> bytes | None:
    for name, value in headers:  # type: ignore[attr-defined]
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return bytes(credentials.strip())
            return None
    return None
