"""The innermost app: hands the request to the endpoint for its route's protocol."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.exchange import get_exchange


class ProtocolEndpoint:
    def __init__(
        self,
        http: ASGIApp,
        websocket: ASGIApp,
        ftp: ASGIApp | None = None,
        dns: ASGIApp | None = None,
        llm: ASGIApp | None = None,
    ) -> None:
        self._http = http
        self._websocket = websocket
        self._ftp = ftp
        self._dns = dns
        self._llm = llm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route = exchange.route
        assert route is not None
        protocol = route.config.protocol
        if scope["type"] == "websocket":
            if protocol in ("http", "websocket"):
                # An upgrade on an http route is proxied too (as Traefik does): ws:// to its backend.
                await self._websocket(scope, receive, send)
            else:
                await reject(
                    scope,
                    send,
                    "bad_request",
                    f"Route {route.name} does not accept WebSocket upgrades",
                    exchange.request_id,
                )
            return
        if protocol == "http":
            await self._http(scope, receive, send)
        elif protocol == "ftp" and self._ftp is not None:
            await self._ftp(scope, receive, send)
        elif protocol == "dns" and self._dns is not None:
            await self._dns(scope, receive, send)
        elif protocol == "llm" and self._llm is not None:
            await self._llm(scope, receive, send)
        elif protocol == "websocket":
            await reject(
                scope,
                send,
                "upgrade_required",
                f"Route {route.name} is a WebSocket route: send an upgrade",
                exchange.request_id,
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
            )
        else:
            await reject(
                scope,
                send,
                "not_implemented",
                f"{protocol.upper()} routes are not implemented yet in Kairos (route {route.name})",
                exchange.request_id,
            )
