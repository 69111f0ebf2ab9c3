"""Metrics history endpoints and the live metrics streams, with kairos-rs's paths and shapes.

REST (under the admin prefix, default ``/api``):

- ``GET /metrics/list`` → the series names (``["requests_total", ...]``);
- ``GET /metrics/history?name&start&end[&interval]`` → the points
  ``[{"timestamp", "value": {"type": "Counter"|"Gauge", "value": n}}]``, or with ``interval``
  (``one_minute|five_minutes|one_hour|one_day``) the windows
  ``[{"start_time","end_time","count","sum","min","max","avg"}]``. Bad parameters get a 400 JSON
  error naming the parameter (kairos-rs answered actix's plain-text extractor error).

WebSocket (kairos-rs's absolute paths, behind the same admin guard; ``?token=`` works):

- ``/ws/metrics``: a ``Snapshot`` on connect and every ``interval_seconds`` (default 1). The client
  may send ``{"metrics": [...], "interval_seconds": n, "include_history": bool}``;
  ``include_history`` answers one ``TimeSeries`` per requested series (all when ``metrics`` is
  empty) covering the last hour. Bad input answers ``{"type": "Error", "message": "Invalid
  subscription: ..."}`` naming the field, and the stream carries on with its previous settings
  (kairos-rs's task panicked on ``interval_seconds: 0``). When nothing else was sent for 30 s (a
  long interval) a ``Heartbeat`` keeps idle-timeout proxies from cutting the stream.
- ``/ws/admin/metrics``: every second ``{"requests_total", "active_connections",
  "requests_error", "success_rate", "uptime", "peak_connections"}``.

Each stream is one task that sends plus one reader task. The reader hands messages over through
a queue of ``INBOX_SIZE``; when it is full the reader stops reading, so a client flooding
subscriptions is slowed by TCP, not buffered. Events are built when due and sent one at a time,
so nothing queues on our side for a slow reader; a send that cannot complete within
``SEND_TIMEOUT_SECONDS`` ends the stream (close 1008). Client disconnect ends both tasks; gateway
shutdown ends every stream with close 1001 (``MetricsHistory.streams``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from kairos.admin.responses import answer
from kairos.api_models import MetricsSummary, RouteSummary
from kairos.errors import error_body
from kairos.observability.history import INTERVALS, rfc3339, to_micros
from kairos.observability.requests import BUCKETS

if TYPE_CHECKING:
    from kairos.gateway import Gateway

DEFAULT_INTERVAL_SECONDS = 1.0
MIN_INTERVAL_SECONDS = 0.1
MAX_INTERVAL_SECONDS = 3600.0
HISTORY_SECONDS = 3600.0  # include_history covers the last hour (kairos-rs)
HEARTBEAT_SECONDS = 30.0
SEND_TIMEOUT_SECONDS = 10.0
INBOX_SIZE = 8
ADMIN_INTERVAL_SECONDS = 1.0

_GONE = object()  # the client disconnected
_SHUTDOWN = object()  # the gateway is stopping


def endpoints(gateway: Gateway) -> list[BaseRoute]:
    api = HistoryApi(gateway)
    return [
        Route("/metrics/list", api.names, methods=["GET"]),
        Route("/metrics/history", api.history, methods=["GET"]),
        Route("/metrics/summary", SummaryApi(gateway).summary, methods=["GET"]),
    ]


def stream_endpoints(gateway: Gateway) -> list[BaseRoute]:
    streams = Streams(gateway)
    return [
        WebSocketRoute("/ws/metrics", streams.metrics),
        WebSocketRoute("/ws/admin/metrics", streams.admin),
    ]


# -- REST ---------------------------------------------------------------------------------------


class BadParameter(ValueError):
    """A query parameter that is missing or malformed; the message names it."""


_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


def parse_timestamp(name: str, raw: str | None) -> int:
    """An RFC 3339 timestamp as integer microseconds since the epoch.

    A ``+`` written unencoded in a query string arrives as a space (``...T06:00:00 02:00``): that
    is put back rather than refused. A timestamp without an offset is refused: guessing the
    zone would silently shift the window.
    """
    if raw is None or not raw.strip():
        raise BadParameter(
            f"missing query parameter `{name}` (an RFC 3339 timestamp such as 2026-01-31T12:00:00Z)"
        )
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(
            f"query parameter `{name}`: expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, "
            f"got {raw!r}"
        ) from None
    if moment.tzinfo is None:
        raise BadParameter(
            f"query parameter `{name}`: {raw!r} has no time zone; add Z or an offset such as +00:00"
        )
    return to_micros(moment)


class HistoryApi:
    def __init__(self, gateway: Gateway) -> None:
        self.store = gateway.metrics_history

    async def names(self, request: Request) -> Response:
        return JSONResponse(self.store.names())

    async def history(self, request: Request) -> Response:
        query = request.query_params
        try:
            name = query.get("name")
            if name is None:
                raise BadParameter("missing query parameter `name` (see GET /metrics/list for the names)")
            if not name:
                raise BadParameter("query parameter `name` must not be empty")
            start = parse_timestamp("start", query.get("start"))
            end = parse_timestamp("end", query.get("end"))
            if start > end:
                raise BadParameter(
                    f"query parameter `start` ({query['start']}) is after `end` ({query['end']})"
                )
            interval = query.get("interval")
            if interval is not None and interval not in INTERVALS:
                raise BadParameter(
                    f"query parameter `interval`: expected one of {', '.join(INTERVALS)}, got {interval!r}"
                )
        except BadParameter as exc:
            return _bad_request(str(exc))
        if interval is None:
            return JSONResponse(self.store.points(name, start, end))
        return JSONResponse(self.store.aggregate(name, start, end, INTERVALS[interval]))


class SummaryApi:
    """``GET /metrics/summary[?top=N]``: totals, the merged request-duration histogram and the
    N busiest routes (default 10, at most 10,000) straight from the counters the /metrics
    collector reads, for dashboards that poll every second."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def summary(self, request: Request) -> Response:
        text = request.query_params.get("top", "10")
        if not text.isdigit() or not 0 <= int(text) <= 10_000:
            return _bad_request(f"query parameter `top`: an integer from 0 to 10000 (got {text!r})")
        metrics = self.gateway.request_metrics
        per_route: dict[str, list[int]] = {}  # route -> [requests, 5xx, 4xx, *non-cumulative buckets]
        merged = [0] * (len(BUCKETS) + 1)
        for (route, _), series in metrics.series.items():
            entry = per_route.setdefault(route, [0, 0, 0, *([0] * (len(BUCKETS) + 1))])
            for counts in (series.by_gateway, series.by_upstream):
                for code, count in counts.items():
                    entry[0] += count
                    entry[1] += count if code >= 500 else 0
                    entry[2] += count if 400 <= code < 500 else 0
            for index, count in enumerate(series.duration.counts):
                entry[3 + index] += count
                merged[index] += count
        busiest = sorted(per_route.items(), key=lambda item: (-item[1][0], item[0]))[: int(text)]
        # The totals are the sums of what was just counted per route (RequestMetrics.totals()
        # would walk every series a second time).
        return answer(
            MetricsSummary(
                timestamp=_now(),
                uptime=round(self.gateway.uptime, 3),
                requests=sum(entry[0] for entry in per_route.values()),
                errors=sum(entry[1] for entry in per_route.values()),
                client_errors=sum(entry[2] for entry in per_route.values()),
                in_flight=metrics.in_flight,
                bounds=list(BUCKETS),
                buckets=list(accumulate(merged)),
                routes=[
                    RouteSummary(
                        route=route,
                        requests=entry[0],
                        errors=entry[1],
                        client_errors=entry[2],
                        buckets=list(accumulate(entry[3:])),
                    )
                    for route, entry in busiest
                ],
                total_routes=len(per_route),
            )
        )


def _bad_request(message: str) -> Response:
    request_id = str(uuid.uuid4())
    return Response(
        error_body("bad_request", message, request_id),
        status_code=400,
        media_type="application/json",
        headers={"x-request-id": request_id},
    )


# -- subscriptions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    metrics: tuple[str, ...] = ()
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    include_history: bool = False


class InvalidSubscription(ValueError):
    """The message names the field at fault; the stream answers it as an ``Error`` event."""


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_subscription(text: str, known: Collection[str]) -> Subscription:
    """kairos-rs's ``{"metrics", "interval_seconds", "include_history"}`` (each optional, defaults
    ``[]``, 1, false), validated: unknown fields are ignored as serde does, wrong ones refused."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSubscription(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidSubscription(
            'expected a JSON object such as {"metrics": [], "interval_seconds": 1, '
            f'"include_history": false}}, got {_shown(data)}'
        )
    metrics = data.get("metrics", [])
    if not isinstance(metrics, list):
        raise InvalidSubscription(f"`metrics` must be an array of metric names, got {_shown(metrics)}")
    for index, item in enumerate(metrics):
        if not isinstance(item, str):
            raise InvalidSubscription(
                f"`metrics[{index}]` must be a metric name (a string), got {_shown(item)}"
            )
    unknown = [item for item in metrics if item not in known]
    if unknown:
        raise InvalidSubscription(
            f"`metrics`: unknown metric {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
        )
    interval = data.get("interval_seconds", DEFAULT_INTERVAL_SECONDS)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not math.isfinite(interval):
        raise InvalidSubscription(f"`interval_seconds` must be a number of seconds, got {_shown(interval)}")
    if interval <= 0:
        raise InvalidSubscription(f"`interval_seconds` must be greater than 0, got {_shown(interval)}")
    if interval < MIN_INTERVAL_SECONDS:
        raise InvalidSubscription(
            f"`interval_seconds` must be at least {MIN_INTERVAL_SECONDS}, got {_shown(interval)}"
        )
    if interval > MAX_INTERVAL_SECONDS:
        raise InvalidSubscription(
            f"`interval_seconds` must be at most {MAX_INTERVAL_SECONDS:g}, got {_shown(interval)}"
        )
    include = data.get("include_history", False)
    if not isinstance(include, bool):
        raise InvalidSubscription(f"`include_history` must be true or false, got {_shown(include)}")
    return Subscription(tuple(metrics), float(interval), include)


# -- events -------------------------------------------------------------------------------------


def _now() -> str:
    return rfc3339(to_micros(datetime.now(UTC)))


def snapshot_event(gateway: Gateway) -> dict[str, Any]:
    """kairos-rs's Snapshot. ``avg_response_time`` is the mean since start in ms (as kairos-rs;
    the history's ``response_time_avg`` series has the per-interval mean)."""
    metrics = gateway.request_metrics
    totals = metrics.totals()
    return {
        "type": "Snapshot",
        "timestamp": _now(),
        "requests_total": totals.requests,
        "requests_success": totals.success,
        "requests_error": totals.errors,
        "active_connections": metrics.in_flight,
        "avg_response_time": round(totals.average_ms, 3),
        "success_rate": round(totals.success_rate, 2),
    }


def admin_event(gateway: Gateway) -> dict[str, Any]:
    metrics = gateway.request_metrics
    totals = metrics.totals()
    return {
        "requests_total": totals.requests,
        "active_connections": metrics.in_flight,
        "requests_error": totals.errors,
        "success_rate": round(totals.success_rate, 2),
        "uptime": int(gateway.uptime),
        "peak_connections": metrics.peak_in_flight,
    }


# -- streams ------------------------------------------------------------------------------------


def _post(inbox: asyncio.Queue[object], marker: object) -> None:
    """Put an end marker in the inbox even when it is full (what is queued no longer matters)."""
    while inbox.full():
        inbox.get_nowait()
    inbox.put_nowait(marker)


class _Stream(abc.ABC):
    """One client: ``opening()`` on connect, ``tick()`` every ``interval`` seconds, ``answer()``
    to each client message; heartbeats, back-pressure and the ending are handled here."""

    def __init__(self, websocket: WebSocket, gateway: Gateway, interval: float) -> None:
        self.websocket = websocket
        self.gateway = gateway
        self.interval = interval
        self.last_sent = 0.0

    def opening(self) -> list[dict[str, Any]]:
        return self.tick()

    @abc.abstractmethod
    def tick(self) -> list[dict[str, Any]]:
        """The events to send every ``interval`` seconds (each stream kind has its own)."""

    def answer(self, text: str) -> list[dict[str, Any]]:
        return []

    async def run(self) -> None:
        await self.websocket.accept()
        inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=INBOX_SIZE)
        registry = self.gateway.metrics_history.streams

        def closer() -> None:
            _post(inbox, _SHUTDOWN)

        registry.add(closer)
        reader = asyncio.create_task(self._read(inbox))
        try:
            ending = await self._serve(inbox)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            registry.discard(closer)
        if ending is not None:
            code, reason = ending
            # The client may be gone or stuck: nothing more to tell it then.
            with contextlib.suppress(TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
                await asyncio.wait_for(self.websocket.close(code, reason), 1.0)

    async def _read(self, inbox: asyncio.Queue[object]) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                await inbox.put(text)  # full: stop reading until the sender catches up
        except (WebSocketDisconnect, OSError, RuntimeError):
            return
        finally:
            _post(inbox, _GONE)

    async def _send(self, events: list[dict[str, Any]]) -> bool | None:
        """True: sent; False: the client is gone; None: too slow (the send timed out)."""
        for event in events:
            try:
                await asyncio.wait_for(self.websocket.send_text(json.dumps(event)), SEND_TIMEOUT_SECONDS)
            except TimeoutError:
                return None
            except (WebSocketDisconnect, OSError, RuntimeError):
                return False
        self.last_sent = asyncio.get_running_loop().time()
        return True

    async def _serve(self, inbox: asyncio.Queue[object]) -> tuple[int, str] | None:
        """Runs until the stream ends; returns the close to send (None: the client left)."""
        loop = asyncio.get_running_loop()
        events = self.opening()
        due = loop.time() + self.interval
        while True:
            sent = await self._send(events)
            if sent is None:
                return 1008, "client too slow to read the stream"
            if not sent:
                return None
            events = []
            while not events:
                now = loop.time()
                if now >= due:
                    events = self.tick()
                    due = max(due + self.interval, now)  # after a stall, no burst of catch-up ticks
                    break
                heartbeat_at = self.last_sent + HEARTBEAT_SECONDS
                if now >= heartbeat_at:
                    events = [{"type": "Heartbeat", "timestamp": _now()}]
                    break
                try:
                    item = await asyncio.wait_for(inbox.get(), min(due, heartbeat_at) - now)
                except TimeoutError:
                    continue
                if item is _GONE:
                    return None
                if item is _SHUTDOWN:
                    return 1001, "gateway shutting down"
                interval = self.interval
                events = self.answer(str(item))
                if self.interval != interval:
                    due = loop.time() + self.interval


class MetricsStream(_Stream):
    """``/ws/metrics``: Snapshots, subscriptions, history on request."""

    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        super().__init__(websocket, gateway, DEFAULT_INTERVAL_SECONDS)
        self.subscription = Subscription()

    def tick(self) -> list[dict[str, Any]]:
        return [snapshot_event(self.gateway)]

    def answer(self, text: str) -> list[dict[str, Any]]:
        history = self.gateway.metrics_history
        names = history.names()
        try:
            subscription = parse_subscription(text, names)
        except InvalidSubscription as exc:
            return [{"type": "Error", "message": f"Invalid subscription: {exc}"}]
        self.subscription = subscription
        self.interval = subscription.interval_seconds
        if not subscription.include_history:
            return []
        return [
            {"type": "TimeSeries", "metric_name": name, "data_points": history.recent(name, HISTORY_SECONDS)}
            for name in subscription.metrics or names
        ]


class AdminStream(_Stream):
    """``/ws/admin/metrics``: the admin dashboard's counters every second; messages are ignored."""

    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        super().__init__(websocket, gateway, ADMIN_INTERVAL_SECONDS)

    def tick(self) -> list[dict[str, Any]]:
        return [admin_event(self.gateway)]


class Streams:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def metrics(self, websocket: WebSocket) -> None:
        await MetricsStream(websocket, self.gateway).run()

    async def admin(self, websocket: WebSocket) -> None:
        await AdminStream(websocket, self.gateway).run()
