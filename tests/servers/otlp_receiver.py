"""A minimal OTLP/HTTP trace receiver for the tracing tests (aiohttp, own process).

python -m tests.servers.otlp_receiver --port 4318

``POST /v1/traces`` takes what the real OTLP/HTTP exporter sends (protobuf
``ExportTraceServiceRequest``, gzip or not), decodes it with opentelemetry-proto and keeps every
span. ``GET /spans`` serves them as JSON (``?trace_id=`` to filter), one object per span::

    {"service": "kairos", "name": "GET /users/{id}", "kind": "SERVER", "trace_id": hex,
     "span_id": hex, "parent_span_id": hex or "", "status": "ERROR" | "OK" | "UNSET",
     "attributes": {key: value}, "start": ns, "end": ns}

``DELETE /spans`` forgets them all.
"""

from __future__ import annotations

import argparse
import gzip
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPANS = web.AppKey("spans", list)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def _spans(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "service": resource.get("service.name"),
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                        "attributes": {item.key: _value(item.value) for item in span.attributes},
                        "events": [event.name for event in span.events],
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                    }
                )
    return out


async def receive_traces(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    if request.content_type != "application/x-protobuf":
        return web.Response(status=415, text=f"expected application/x-protobuf, got {request.content_type}")
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    request.app[SPANS].extend(_spans(message))
    reply = ExportTraceServiceResponse().SerializeToString()
    return web.Response(body=reply, content_type="application/x-protobuf")


async def list_spans(request: web.Request) -> web.Response:
    trace_id = request.query.get("trace_id")
    spans = [span for span in request.app[SPANS] if trace_id is None or span["trace_id"] == trace_id]
    return web.json_response(spans)


async def clear_spans(request: web.Request) -> web.Response:
    request.app[SPANS].clear()
    return web.json_response({"ok": True})


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SPANS] = []
    app.router.add_post("/v1/traces", receive_traces)
    app.router.add_get("/spans", list_spans)
    app.router.add_delete("/spans", clear_spans)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
