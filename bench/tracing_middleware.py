"""Per-request cost of tracing (KAIROS_TRACING), in process: the same trivial request, traced or not.

.venv/bin/python bench/tracing_middleware.py

- off: the endpoint alone. With tracing off the pipeline has no tracing layer, so this is exact.
- on: ServerSpanMiddleware + UpstreamSpanMiddleware around it (a SERVER and a CLIENT span, the
  caller's traceparent extracted, the attempt's injected), a real BatchSpanProcessor whose
  exporter encodes each batch to OTLP protobuf exactly like the OTLP/HTTP exporter, without the
  network send; its worker thread competes for the GIL as it would in the gateway.
- the same without export (the request path's share), 1 in 10 requests sampled, none sampled;
- for comparison, a server span alone (not exported) from ours and from
  opentelemetry-instrumentation-asgi's OpenTelemetryMiddleware (per-message spans excluded, no-op
  meter: its cheapest setting).

Figures are CPU microseconds of the whole process per request (``time.process_time``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased
from opentelemetry.trace import Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.config import load_data
from kairos.exchange import SCOPE_KEY, Exchange
from kairos.middleware.tracing import ServerSpanMiddleware, UpstreamSpanMiddleware
from kairos.routing.route import Route, compile_route

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY: Message = {"type": "http.response.body", "body": b"ok"}
HEADERS = [
    (b"host", b"127.0.0.1:5900"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]


class EncodingExporter(SpanExporter):
    """Does the OTLP exporter's CPU work (protobuf encoding), not its network send."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializePartialToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def bench_route() -> Route:
    config = load_data(
        {
            "version": 1,
            "routers": [
                {
                    "external_path": "/users/{id}",
                    "internal_path": "/users/{id}",
                    "methods": ["GET"],
                    "backends": [{"host": "http://127.0.0.1", "port": 9000, "weight": 1}],
                }
            ],
        },
        "(bench)",
    ).config
    return compile_route(0, config.routers[0], {})


ROUTE = bench_route()


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(BODY)


def exchange_opener(app: ASGIApp) -> ASGIApp:
    """What the pipeline does between the two layers: the Exchange, the route, the backend."""

    async def open_exchange(scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = Exchange(
            request_id="r", client_ip="127.0.0.1", started=0.0, route=ROUTE, backend=ROUTE.backends[0]
        )
        await app(scope, receive, send)

    return open_exchange


def otel_middleware(tracer: Tracer) -> ASGIApp | None:
    """opentelemetry-instrumentation-asgi's middleware in its cheapest setting, when installed (it
    is not a dependency of Kairos: only this comparison uses it)."""
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:
        return None
    middleware: ASGIApp = OpenTelemetryMiddleware(
        exchange_opener(endpoint),
        tracer=tracer,
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["receive", "send"],
    )
    return middleware


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def send(message: Message) -> None:
    pass


async def run(app: ASGIApp, count: int, headers: list[tuple[bytes, bytes]] = HEADERS) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/users/42",
        "raw_path": b"/users/42",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 5900),
        "client": ("127.0.0.1", 40000),
    }
    # CPU time of the whole process (the export thread included), not wall time: the figure stays
    # honest on a shared machine where other processes take turns on the cores.
    started = time.process_time()
    for _ in range(count):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / count * 1e6


async def main() -> None:
    exporter = EncodingExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("kairos")
    unexported = TracerProvider(shutdown_on_exit=False).get_tracer("kairos")  # spans end, go nowhere
    sampled = TracerProvider(sampler=TraceIdRatioBased(0.1), shutdown_on_exit=False)
    sampled.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    one_in_ten = sampled.get_tracer("kairos")
    never = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False).get_tracer("kairos")
    apps: dict[str, ASGIApp | None] = {
        "off (no tracing layer)": exchange_opener(endpoint),
        "on: server + client span": ServerSpanMiddleware(
            exchange_opener(UpstreamSpanMiddleware(endpoint, tracer)), tracer
        ),
        "on, spans not exported (request path only)": ServerSpanMiddleware(
            exchange_opener(UpstreamSpanMiddleware(endpoint, unexported)), unexported
        ),
        "on, 1 in 10 sampled (traceidratio 0.1)": ServerSpanMiddleware(
            exchange_opener(UpstreamSpanMiddleware(endpoint, one_in_ten)), one_in_ten
        ),
        "on, not sampled (always_off)": ServerSpanMiddleware(
            exchange_opener(UpstreamSpanMiddleware(endpoint, never)), never
        ),
        "server span only, not exported (ours)": ServerSpanMiddleware(exchange_opener(endpoint), unexported),
        "server span only, not exported (OpenTelemetryMiddleware)": otel_middleware(unexported),
    }
    count, repeats = 5_000, 3
    results: dict[str, float] = {}
    for name, app in apps.items():
        if app is None:
            print(f"{name}: skipped (pip install opentelemetry-instrumentation-asgi)")
            continue
        # The sampled row has no incoming traceparent: the ratio decides, not the caller's flag.
        headers = HEADERS[:-1] if "sampled" in name else HEADERS  # (the sampled/not sampled rows)
        await run(app, 1_000, headers)  # warm up
        results[name] = min([await run(app, count, headers) for _ in range(repeats)])
    provider.shutdown()
    sampled.shutdown()
    off = results["off (no tracing layer)"]
    for name, micros in results.items():
        print(f"{name:58s} {micros:7.1f} µs/request  (+{micros - off:.1f})")
    print(f"spans exported (encoded): {exporter.spans}")


if __name__ == "__main__":
    asyncio.run(main())
