"""Tracing layers: a SERVER span per request, a CLIENT span per upstream attempt (OpenTelemetry).

Only imported when tracing is on (``KAIROS_TRACING``); the pipeline then adds
``ServerSpanMiddleware`` outermost and wraps each proxy endpoint in ``UpstreamSpanMiddleware``.

Why not opentelemetry-instrumentation-asgi's ``OpenTelemetryMiddleware`` (what Starlette/FastAPI
instrumentation uses)? Measured in process (``bench/tracing_middleware.py``: a server span, not
exported) it costs ~260 µs of CPU per request against ~100 µs for this layer, for things a gateway
does not want: it names the span from the raw path before routing (high cardinality, and
"GET /users/42" instead of "GET /users/{id}"), opens two extra INTERNAL spans per ASGI message
unless told not to, decodes every header several times to fill attributes, records its own
metrics, and keeps a WebSocket's server span open for the whole connection (exported only when it
closes, hours later). These layers keep its conventions (the stable HTTP semantic conventions, the
global propagator from ``OTEL_PROPAGATORS``) and do less:

- the server span starts as ``{method}`` and is renamed ``{method} {route template}`` with
  ``http.route`` when the response starts (the route is known by then; a request no route matched
  stays ``{method}``, as the conventions ask). It is the child of the caller's ``traceparent`` when
  one came in. Gateway answers (401, 404, 429, 503 …) are traced like proxied ones; the attribute
  ``kairos.response.source`` tells them apart (``gateway`` / ``upstream``), ``kairos.request_id``
  links the span to the access log and the error body.
- one CLIENT span per attempt, child of the server span: the retry layer re-enters the stack
  below it, so three attempts are three spans, each with ``kairos.attempt``, the backend's
  ``server.address``/``server.port`` and the upstream's status or ``error.type`` (connect, timeout,
  error). The upstream receives a ``traceparent`` naming that attempt's span (the caller's one is
  replaced, not repeated) and the ``tracestate`` and ``baggage`` of the trace.
- WebSockets: both spans cover the upgrade and end once it is settled (101, or the refusal), as
  the metrics do; the relayed messages are not traced.

Spans a sampler drops cost only their creation: attributes are set on recording spans only.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import context as context_api
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import GENERATED, websocket_outcome
from kairos.exchange import SCOPE_KEY, Exchange

Headers = Sequence[tuple[bytes, bytes]]
# Methods named as they are; any other is "_OTHER" in attributes and "HTTP" in span names (semconv).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
_ERROR = Status(StatusCode.ERROR)


class _AsgiHeaders(Getter[Headers]):
    """Reads ASGI headers (lower-case byte names) for the propagator, without building a dict:
    it asks for two or three names per request."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_GETTER = _AsgiHeaders()


def _method(scope: Scope) -> tuple[str, str]:
    """(attribute value, span-name prefix) of the request method; an upgrade is a GET."""
    method: str = scope["method"] if scope["type"] == "http" else "GET"
    return (method, method) if method in _KNOWN_METHODS else ("_OTHER", "HTTP")


class ServerSpanMiddleware:
    """One SERVER span per HTTP request or WebSocket upgrade, current while the request runs."""

    def __init__(self, app: ASGIApp, tracer: Tracer, propagator: TextMapPropagator | None = None) -> None:
        self.app = app
        self.tracer = tracer
        self.propagator = propagator or get_global_textmap()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        method, prefix = _method(scope)
        parent = self.propagator.extract(scope["headers"], getter=_GETTER)
        span = self.tracer.start_span(
            prefix,
            parent,
            SpanKind.SERVER,
            {
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme") or "http",
                "network.protocol.version": scope.get("http_version") or "1.1",
            },
        )
        recording = span.is_recording()
        ended = settled = False
        token = context_api.attach(set_span_in_context(span, parent))

        def annotate(attributes: dict[str, str | int]) -> None:
            """Name the span after the route (known once routing ran), link the request id, and
            set ``attributes`` with them (one ``set_attributes``: each call takes the span's lock)."""
            exchange: Exchange | None = scope.get(SCOPE_KEY)
            if exchange is not None:
                route = exchange.route
                if route is not None:
                    span.update_name(f"{prefix} {route.name}")
                    attributes["http.route"] = route.name
                attributes["kairos.request_id"] = exchange.request_id
                attributes["client.address"] = exchange.client_ip
            span.set_attributes(attributes)

        def settle(status: int, generated: bool) -> None:
            """The answer is known: annotate, record the outcome."""
            nonlocal settled
            settled = True
            attributes: dict[str, str | int] = {
                "http.response.status_code": status,
                "kairos.response.source": "gateway" if generated else "upstream",
            }
            if status >= 500:
                attributes["error.type"] = str(status)
                span.set_status(_ERROR)
            annotate(attributes)

        async def traced_send(message: Message) -> None:
            nonlocal ended
            if not ended:
                kind = message["type"]
                if kind == "http.response.start":
                    if recording:
                        settle(message["status"], bool(message.get(GENERATED)))
                elif kind != "http.response.body":  # WebSocket: the upgrade's outcome ends the span
                    outcome = websocket_outcome(message)
                    if outcome is not None:
                        if recording:
                            settle(*outcome)
                        ended = True
                        span.end()
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            if not ended and recording:
                _failed(span, exc, type(exc).__qualname__)
            raise
        finally:
            context_api.detach(token)
            if not ended:
                if recording and not settled:  # no answer (the client left, or an error escaped)
                    annotate({})
                span.end()


class UpstreamSpanMiddleware:
    """One CLIENT span per upstream attempt around a proxy endpoint, and its context sent upstream.

    Placed just outside the endpoint (inside retry, balancer and breaker), so it runs once per
    attempt that reaches an upstream, with ``Exchange.backend`` and ``.attempt`` already set.
    """

    def __init__(self, app: ASGIApp, tracer: Tracer, propagator: TextMapPropagator | None = None) -> None:
        self.app = app
        self.tracer = tracer
        self.propagator = propagator or get_global_textmap()
        # Headers the propagator writes (traceparent, tracestate, baggage …): the caller's copies are
        # dropped so the upstream gets exactly one of each, naming this attempt's span.
        self._fields = frozenset(field.lower().encode("latin-1") for field in self.propagator.fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        backend = exchange.backend if exchange is not None else None
        if exchange is None or backend is None or exchange.route is None:
            await self.app(scope, receive, send)
            return
        method, prefix = _method(scope)
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": backend.host,
            "server.port": backend.port,
            "kairos.attempt": exchange.attempt,
        }
        if exchange.attempt:
            attributes["http.request.resend_count"] = exchange.attempt
        span = self.tracer.start_span(
            f"{prefix} {exchange.route.config.internal_path}", kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, set_span_in_context(span))
        fields = self._fields
        headers = [header for header in scope["headers"] if header[0] not in fields]
        headers += [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()
        ]
        scope = dict(scope)
        scope["headers"] = headers
        recording = span.is_recording()
        status = 0
        generated = False
        ended = False

        async def traced_send(message: Message) -> None:
            nonlocal status, generated, ended
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                status, generated = message["status"], bool(message.get(GENERATED))
            elif kind == "websocket.accept" and not ended:  # the upstream took the upgrade
                status, ended = 101, True
                if recording:
                    _record_attempt(span, exchange, status, generated)
                span.end()
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            if not ended and recording:
                _failed(span, exc, exchange.upstream_failure or type(exc).__qualname__)
                ended = True
                span.end()
            raise
        finally:
            if not ended:
                if recording:
                    _record_attempt(span, exchange, status, generated)
                span.end()


def _failed(span: Span, exc: BaseException, error_type: str) -> None:
    """An exception ended the request or the attempt: recorded on the span, which is marked failed."""
    span.record_exception(exc)
    span.set_attribute("error.type", error_type)
    span.set_status(_ERROR)


def _record_attempt(span: Span, exchange: Exchange, status: int, generated: bool) -> None:
    """The upstream's answer, or why there was none. An answer made by the proxy itself (502, 504)
    is no upstream status: it is reported as ``error.type``."""
    failure = exchange.upstream_failure
    if status and not generated:
        if status >= 400:  # a client span's error, by the HTTP conventions
            span.set_attributes({"http.response.status_code": status, "error.type": str(status)})
            span.set_status(_ERROR)
        else:
            span.set_attribute("http.response.status_code", status)
    elif failure is not None or generated:
        span.set_attribute("error.type", failure or "upstream")
        span.set_status(_ERROR)
