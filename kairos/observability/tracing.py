"""OpenTelemetry tracing for the gateway (``KAIROS_TRACING=otlp|console``, extra ``kairos[otel]``).

Imported only when tracing is on: with ``KAIROS_TRACING=off`` (the default) no OpenTelemetry module
is loaded and the pipeline has no tracing layer, so the feature costs nothing.

The Gateway owns one ``Tracing``. Its ``TracerProvider`` is made when the Gateway is (the pipeline
is built before the lifespan runs and its layers need a tracer), but it exports nothing until
``start()``: the batch processor, whose worker thread sends spans, starts in the lifespan and is
flushed and stopped in ``stop()``. A relay processor sits between the two so the gateway can be
started again after a shutdown (the SDK's own ``TracerProvider.shutdown`` is final).

Everything else follows the standard ``OTEL_*`` environment, read by the SDK itself:
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name defaults to ``kairos``),
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``…_HEADERS`` / ``…_TIMEOUT`` / ``…_COMPRESSION``,
``OTEL_BSP_SCHEDULE_DELAY`` / ``OTEL_BSP_MAX_QUEUE_SIZE``, and ``OTEL_PROPAGATORS`` (which headers
carry the context in and out; W3C ``traceparent``/``tracestate`` + ``baggage`` by default).
"""

from __future__ import annotations

import asyncio
import logging

from kairos.settings import OTEL_INSTALL_HINT

try:
    from opentelemetry import context as context_api
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.trace import Tracer
except ImportError as exc:  # pragma: no cover - Settings already refuses tracing without the extra
    raise ImportError(
        f"KAIROS_TRACING needs the OpenTelemetry packages ({exc}): {OTEL_INSTALL_HINT}"
    ) from exc

logger = logging.getLogger("kairos")

TRACER_NAME = "kairos"
# How long shutdown waits for the last spans to reach the collector. The exporter retries a failing
# collector for up to its own timeout (10 s by default) per batch; past this bound its retries are
# cut and what is left is dropped, so a collector that is down never holds the gateway's exit.
SHUTDOWN_FLUSH_SECONDS = 3.0


class _Relay(SpanProcessor):
    """Hands ended spans to the current batch processor, or drops them while none runs (before
    startup, after shutdown). One attribute read per span; no lock: a span ending during the
    swap goes to the old processor or nowhere, never to a stopped one's queue twice."""

    def __init__(self) -> None:
        self.target: SpanProcessor | None = None

    def on_start(self, span: Span, parent_context: context_api.Context | None = None) -> None:
        target = self.target
        if target is not None:
            target.on_start(span, parent_context)

    def _on_ending(self, span: Span) -> None:
        target = self.target
        if target is not None:
            target._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        target = self.target
        if target is not None:
            target.on_end(span)

    def shutdown(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        target = self.target
        return target.force_flush(timeout_millis) if target is not None else True


def _resource(version: str) -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME`` win), named
    ``kairos`` instead of the SDK's ``unknown_service:python`` when the operator named nothing."""
    resource = Resource.create({SERVICE_VERSION: version})
    name = resource.attributes.get(SERVICE_NAME)
    if not isinstance(name, str) or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "kairos"}))
    return resource


class Tracing:
    """The gateway's tracer provider and exporter, for ``exporter`` ``otlp`` or ``console``."""

    def __init__(self, exporter: str, version: str) -> None:
        if exporter not in ("otlp", "console"):
            raise ValueError(f"KAIROS_TRACING={exporter!r}: expected off, otlp or console")
        self.exporter = exporter
        self._relay = _Relay()
        self._exporter: SpanExporter | None = None
        # The atexit hook (shutdown_on_exit) only matters for a parent app that never runs our
        # lifespan; after the lifespan's stop() it finds nothing to flush.
        self.provider = TracerProvider(resource=_resource(version))
        self.provider.add_span_processor(self._relay)
        self.tracer: Tracer = self.provider.get_tracer(TRACER_NAME, version)

    def _make_exporter(self) -> SpanExporter:
        if self.exporter == "console":
            return ConsoleSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*

    @property
    def running(self) -> bool:
        return self._relay.target is not None

    def start(self) -> None:
        """Start exporting (the batch processor's worker thread); from the gateway's startup."""
        if self._relay.target is None:
            self._exporter = self._make_exporter()
            self._relay.target = BatchSpanProcessor(self._exporter)
            logger.info("tracing on: %s exporter", self.exporter)

    async def stop(self, within: float = SHUTDOWN_FLUSH_SECONDS) -> None:
        """Export what is queued and stop the worker, off the event loop (an export blocks), for at
        most ``within`` seconds: then the exporter is shut down, which cuts its retries short."""
        exporter, self._exporter = self._exporter, None
        flush = asyncio.ensure_future(asyncio.to_thread(self._relay.shutdown))
        try:
            await asyncio.wait_for(asyncio.shield(flush), within)
        except TimeoutError:
            logger.warning("tracing: spans not exported within %.3gs of shutdown were dropped", within)
            if exporter is not None:
                exporter.shutdown()
            await asyncio.wait({flush}, timeout=within)
