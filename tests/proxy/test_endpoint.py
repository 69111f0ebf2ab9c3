"""The protocol endpoint on its own: a ProtocolEndpoint built without an app for a protocol (as a
user stacking their own pipeline may) answers that protocol's routes 501 with the gateway's error."""

from __future__ import annotations

import time

from starlette.types import Receive, Scope, Send

from kairos.exchange import SCOPE_KEY, Exchange
from kairos.proxy.endpoint import ProtocolEndpoint
from tests.asgi import AsgiClients
from tests.routing.util import single_route


async def _never(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the HTTP and WebSocket apps must not be called for a dns route")


def test_a_protocol_without_its_app_is_501(asgi_client: AsgiClients) -> None:
    route = single_route(external="/dns", protocol="dns", backends=[{"host": "127.0.0.1", "port": 53}])
    endpoint = ProtocolEndpoint(http=_never, websocket=_never)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = Exchange("req-1", "127.0.0.1", time.perf_counter(), route=route)
        await endpoint(scope, receive, send)

    response = asgi_client(app).get("/dns")
    assert response.status_code == 501
    body = response.json()
    assert body["type"] == "not_implemented" and "DNS" in body["error"] and body["request_id"] == "req-1"
