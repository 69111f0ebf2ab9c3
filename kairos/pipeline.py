"""The gateway pipeline, built in one place and read top to bottom (outermost first).

Later concerns (metrics, CORS, auth, rate limits, cache, transforms, AI routing, retries, circuit
breaking) slot in at the positions ARCHITECTURE.md gives; each is an independent pure-ASGI class.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from kairos.gateway import Gateway
from kairos.middleware.auth import AuthMiddleware
from kairos.middleware.balancer import BalancerMiddleware
from kairos.middleware.context import ExchangeMiddleware
from kairos.middleware.ipfilter import IpFilterMiddleware
from kairos.middleware.routing import RouteMiddleware
from kairos.proxy.endpoint import ProtocolEndpoint
from kairos.proxy.http import HttpProxy
from kairos.proxy.websocket import WebSocketProxy


def build_pipeline(gateway: Gateway) -> ASGIApp:
    def count_websockets(delta: int) -> None:
        gateway.websocket_connections += delta

    app: ASGIApp = ProtocolEndpoint(
        http=HttpProxy(gateway.engine_for, gateway.is_trusted_proxy, gateway.deadlines),
        websocket=WebSocketProxy(gateway.is_trusted_proxy, on_open=count_websockets),
    )
    app = BalancerMiddleware(app)
    app = AuthMiddleware(app, gateway.current_authenticator)
    app = IpFilterMiddleware(app, gateway.current_ip_filter)
    app = RouteMiddleware(app, table=gateway.current_table)
    app = ExchangeMiddleware(
        app, resolve_client_ip=gateway.resolve_client_ip, before_first_request=gateway.ensure_started
    )
    return app
