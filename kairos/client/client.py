"""``KairosClient`` and ``AsyncKairosClient``: every admin endpoint of a running gateway, typed.

Both run the same ``Call`` descriptions (kairos/client/calls.py) over one pooled httpx client;
only sending differs. Answers parse into the models the server builds them from
(kairos/api_models.py). Reads (GET) are retried with exponential backoff and jitter on connection
errors and 502/503/504, at most ``max_retries`` times; a write is sent once, whatever happens.

Configuration: ``base_url`` defaults to ``KAIROS_URL`` (else ``http://127.0.0.1:5900``), ``token``
to ``KAIROS_ADMIN_TOKEN``, ``admin_prefix`` to ``KAIROS_ADMIN_PREFIX`` and else to what the
gateway's ``/health`` says (one request, once per client).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from kairos import __version__
from kairos.api_models import (
    Backends,
    ConfigStatus,
    Explanation,
    HealthStatus,
    LlmAnalytics,
    MetricPoint,
    MetricsSummary,
    MetricWindow,
    PurgeResult,
    ReadyStatus,
    RouteAnswer,
    RouteList,
    RoutesReplaced,
    RouteValidation,
    StreamEvent,
)
from kairos.client import calls
from kairos.client.calls import Call, RouteInput
from kairos.client.errors import (
    TOKEN_ADVICE,
    KairosAPIError,
    KairosConnectionError,
    KairosTimeout,
    Unauthorized,
    api_error,
)
from kairos.client.metrics import MetricsSnapshot
from kairos.config.model import RouteConfig

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:5900"
DEFAULT_PREFIX = "/api"
RETRY_STATUSES = (502, 503, 504)
BACKOFF_SECONDS = 0.2  # first retry's delay; doubled each time, capped, with full jitter
BACKOFF_CAP_SECONDS = 2.0


class _Settings:
    """What both clients share: where the gateway is, how to authenticate, when to retry."""

    def __init__(
        self,
        base_url: str | None,
        token: str | None,
        timeout: float,
        max_retries: int,
        admin_prefix: str | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries: must be 0 or more (got {max_retries})")
        url = (base_url or os.environ.get("KAIROS_URL") or DEFAULT_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https:// (got {url!r})")
        self.base_url = url
        self.token = token if token is not None else (os.environ.get("KAIROS_ADMIN_TOKEN") or None)
        self.timeout = timeout
        self.max_retries = max_retries
        prefix = admin_prefix if admin_prefix is not None else os.environ.get("KAIROS_ADMIN_PREFIX")
        self.admin_prefix = "/" + prefix.strip("/") if prefix else None
        self.headers = {"user-agent": f"kairos-client/{__version__}", "accept": "application/json"}
        if self.token:
            self.headers["authorization"] = f"Bearer {self.token}"

    def url(self, call: Call[Any], prefix: str) -> str:
        return (prefix if call.admin else "") + call.path

    def outcome(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code in call.accept:
            return call.parse(response)
        raise api_error(response)

    def retry(self, call: Call[Any], attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to stop."""
        if not call.idempotent or attempt >= self.max_retries:
            return None
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2**attempt))

    def failure(self, exc: httpx.TransportError) -> KairosConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return KairosTimeout(self.base_url, f"no answer within {self.timeout:g} s ({type(exc).__name__})")
        return KairosConnectionError(self.base_url, _reason(exc))

    def stream_timeout(self) -> KairosTimeout:
        return KairosTimeout(
            self.base_url, f"no answer within {self.timeout:g} s (opening the metrics stream)"
        )

    def stream_url(self) -> str:
        return "ws" + self.base_url[4:] + "/ws/metrics"  # http→ws, https→wss

    def stream_headers(self) -> dict[str, str]:
        """The token goes in the Authorization header, never in the URL (URLs end up in logs)."""
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


def _reason(exc: BaseException) -> str:
    """What went wrong, in the words an operator expects: httpx's async transport says "All
    connection attempts failed" and keeps the ConnectionRefusedError in the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "refused" in text or "errno 111" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
        return "unknown host"
    return str(exc) or type(exc).__name__


class KairosClient:
    """A blocking client of one gateway's admin API. Use it as a context manager (or call
    ``close()``): it holds one pooled connection."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        admin_prefix: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(base_url, token, timeout, max_retries, admin_prefix)
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self.routes = SyncRoutes(self)
        self.config = SyncConfig(self)
        self.cache = SyncCache(self)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def admin_prefix(self) -> str:
        """Given, or read from the gateway's /health (retried like any read; kept once known)."""
        if self._settings.admin_prefix is None:
            self._settings.admin_prefix = self.run(calls.health()).admin_prefix or DEFAULT_PREFIX
        return self._settings.admin_prefix

    def _send(self, method: str, url: str, params: Mapping[str, str] | None, body: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, params=params, json=body)
        except httpx.TransportError as exc:
            raise self._settings.failure(exc) from None

    def run(self, call: Call[T]) -> T:
        """Send one call (with retries for reads) and parse its answer."""
        url = self._settings.url(call, self.admin_prefix if call.admin else "")
        attempt = 0
        while True:
            try:
                response = self._send(call.method, url, call.params, call.json)
            except KairosConnectionError:
                delay = self._settings.retry(call, attempt, None)
                if delay is None:
                    raise
            else:
                delay = self._settings.retry(call, attempt, response)
                if delay is None:
                    return self._settings.outcome(call, response)
            attempt += 1
            time.sleep(delay)

    # -- the gateway ---------------------------------------------------------------------------

    def health(self) -> HealthStatus:
        return self.run(calls.health())

    def ready(self) -> ReadyStatus:
        return self.run(calls.ready())

    def metrics(self, prefix: str | None = None) -> MetricsSnapshot:
        """The /metrics exposition, parsed; ``prefix`` keeps only the families starting with it."""
        return self.run(calls.metrics(prefix))

    def metrics_summary(self, top: int = 10) -> MetricsSummary:
        """Totals, the merged latency histogram and the ``top`` busiest routes, computed by the
        gateway (cheap to poll; per worker process)."""
        return self.run(calls.metrics_summary(top))

    def llm_analytics(
        self,
        group_by: str = "model",
        since: datetime | None = None,
        until: datetime | None = None,
        consumer: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> LlmAnalytics:
        """The LLM routes' request analytics, aggregated by ``group_by`` (consumer, model, day,
        route, provider) over ``[since, until)``."""
        return self.run(calls.llm_analytics(group_by, since, until, consumer, model, limit))

    def metric_names(self) -> list[str]:
        return self.run(calls.metric_names())

    def metrics_history(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MetricPoint]:
        """One series' samples between ``start`` and ``end`` (aware datetimes; default: the last hour)."""
        return self.run(calls.metrics_history(name, start, end))

    def metrics_windows(
        self, name: str, interval: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MetricWindow]:
        """One series aggregated per ``interval`` (one_minute, five_minutes, one_hour, one_day)."""
        return self.run(calls.metrics_windows(name, interval, start, end))

    def explain(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> Explanation:
        return self.run(calls.explain(method, path, headers))

    def backends(self) -> Backends:
        return self.run(calls.backends())

    def stream_metrics(self, subscription: Mapping[str, Any] | None = None) -> Generator[StreamEvent]:
        """``/ws/metrics`` events until the gateway closes the stream (or the caller stops);
        see ``AsyncKairosClient.stream_metrics``."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
        from websockets.sync.client import connect

        try:
            socket = connect(
                self._settings.stream_url(),
                additional_headers=self._settings.stream_headers(),
                open_timeout=self._settings.timeout,
            )
        except InvalidHandshake as exc:
            raise _stream_refused(self._settings.base_url, exc) from None
        except TimeoutError:  # the handshake did not complete in time (before OSError: a subclass)
            raise self._settings.stream_timeout() from None
        except OSError as exc:
            raise KairosConnectionError(self._settings.base_url, _reason(exc)) from None
        with socket:
            if subscription is not None:
                socket.send(json.dumps(dict(subscription)))
            try:
                for message in socket:
                    yield StreamEvent.model_validate_json(message)
            except ConnectionClosed as closed:
                ended = _stream_ended(self._settings.base_url, closed)
                if ended is not None:
                    raise ended from None


class SyncRoutes:
    """``client.routes``: the routes, each named by its ``external_path`` (``"/users/{id}"``);
    ``method``/``protocol``/``index`` pick one when several routes share a path."""

    def __init__(self, client: KairosClient) -> None:
        self._client = client

    def list(self) -> list[RouteConfig]:
        return self._client.run(calls.routes_list())

    def list_documents(self) -> RouteList:
        """The routes as written (``${VAR}`` kept, secrets ``"***"``) with the generation."""
        return self._client.run(calls.routes_answers())

    def get(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteConfig:
        return calls.route_model(self._client.run(calls.route_get(path, method, protocol, index)).route)

    def get_document(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteAnswer:
        """The route as written (``${VAR}`` kept, secrets ``"***"``) with its index."""
        return self._client.run(calls.route_get(path, method, protocol, index))

    def create(self, route: RouteInput) -> RouteAnswer:
        return self._client.run(calls.route_create(route))

    def update(
        self,
        route: RouteInput,
        *,
        method: str | None = None,
        protocol: str | None = None,
        index: int | None = None,
    ) -> RouteAnswer:
        return self._client.run(calls.route_update(route, method, protocol, index))

    def delete(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteAnswer:
        return self._client.run(calls.route_delete(path, method, protocol, index))

    def validate(self, route: RouteInput) -> RouteValidation:
        return self._client.run(calls.route_validate(route))

    def replace(
        self, routes: Sequence[RouteInput], *, generation: int | None = None, dry_run: bool = False
    ) -> RoutesReplaced:
        """Replace the whole route list at once, all or nothing; with ``generation``, only if
        that generation is still the one running (else ``Conflict``)."""
        return self._client.run(calls.routes_replace(routes, generation, dry_run))


class SyncConfig:
    def __init__(self, client: KairosClient) -> None:
        self._client = client

    def get(self) -> dict[str, Any]:
        """The running config as written, every secret shown as ``"***"``."""
        return self._client.run(calls.config_get())

    def status(self) -> ConfigStatus:
        return self._client.run(calls.config_status())

    def reload(self) -> ConfigStatus:
        """Reload the config file; an invalid file raises ``ValidationFailed`` (old config serving)."""
        return self._client.run(calls.config_reload())


class SyncCache:
    def __init__(self, client: KairosClient) -> None:
        self._client = client

    def purge(self, route: str | None = None, key_prefix: str | None = None) -> PurgeResult:
        """Drop cached responses of a route template and/or a key prefix; neither: everything."""
        return self._client.run(calls.cache_purge(route, key_prefix))


class AsyncKairosClient:
    """The asyncio twin of ``KairosClient``: the same methods, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        admin_prefix: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(base_url, token, timeout, max_retries, admin_prefix)
        self._http = httpx.AsyncClient(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self.routes = AsyncRoutes(self)
        self.config = AsyncConfig(self)
        self.cache = AsyncCache(self)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def admin_prefix(self) -> str:
        """Given, or read from the gateway's /health (retried like any read; kept once known)."""
        if self._settings.admin_prefix is None:
            self._settings.admin_prefix = (await self.run(calls.health())).admin_prefix or DEFAULT_PREFIX
        return self._settings.admin_prefix

    async def _send(
        self, method: str, url: str, params: Mapping[str, str] | None, body: Any
    ) -> httpx.Response:
        try:
            return await self._http.request(method, url, params=params, json=body)
        except httpx.TransportError as exc:
            raise self._settings.failure(exc) from None

    async def run(self, call: Call[T]) -> T:
        url = self._settings.url(call, await self.admin_prefix() if call.admin else "")
        attempt = 0
        while True:
            try:
                response = await self._send(call.method, url, call.params, call.json)
            except KairosConnectionError:
                delay = self._settings.retry(call, attempt, None)
                if delay is None:
                    raise
            else:
                delay = self._settings.retry(call, attempt, response)
                if delay is None:
                    return self._settings.outcome(call, response)
            attempt += 1
            await asyncio.sleep(delay)

    async def health(self) -> HealthStatus:
        return await self.run(calls.health())

    async def ready(self) -> ReadyStatus:
        return await self.run(calls.ready())

    async def metrics(self, prefix: str | None = None) -> MetricsSnapshot:
        return await self.run(calls.metrics(prefix))

    async def metrics_summary(self, top: int = 10) -> MetricsSummary:
        return await self.run(calls.metrics_summary(top))

    async def llm_analytics(
        self,
        group_by: str = "model",
        since: datetime | None = None,
        until: datetime | None = None,
        consumer: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> LlmAnalytics:
        return await self.run(calls.llm_analytics(group_by, since, until, consumer, model, limit))

    async def metric_names(self) -> list[str]:
        return await self.run(calls.metric_names())

    async def metrics_history(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MetricPoint]:
        return await self.run(calls.metrics_history(name, start, end))

    async def metrics_windows(
        self, name: str, interval: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MetricWindow]:
        return await self.run(calls.metrics_windows(name, interval, start, end))

    async def explain(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> Explanation:
        return await self.run(calls.explain(method, path, headers))

    async def backends(self) -> Backends:
        return await self.run(calls.backends())

    async def stream_metrics(
        self, subscription: Mapping[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent]:
        """``/ws/metrics`` events until the gateway closes the stream (or the caller stops).
        ``subscription`` (sent once on connect): ``{"interval_seconds", "metrics",
        "include_history"}``. A normal close (1000, or 1001 when the gateway stops) ends the
        iteration; any other raises ``KairosConnectionError`` with the code and reason."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        try:
            socket = await connect(
                self._settings.stream_url(),
                additional_headers=self._settings.stream_headers(),
                open_timeout=self._settings.timeout,
            )
        except InvalidHandshake as exc:
            raise _stream_refused(self._settings.base_url, exc) from None
        except TimeoutError:  # the handshake did not complete in time (before OSError: a subclass)
            raise self._settings.stream_timeout() from None
        except OSError as exc:
            raise KairosConnectionError(self._settings.base_url, _reason(exc)) from None
        async with socket:
            if subscription is not None:
                await socket.send(json.dumps(dict(subscription)))
            try:
                async for message in socket:
                    yield StreamEvent.model_validate_json(message)
            except ConnectionClosed as closed:
                ended = _stream_ended(self._settings.base_url, closed)
                if ended is not None:
                    raise ended from None


class AsyncRoutes:
    """``client.routes`` of the async client (see ``SyncRoutes``)."""

    def __init__(self, client: AsyncKairosClient) -> None:
        self._client = client

    async def list(self) -> list[RouteConfig]:
        return await self._client.run(calls.routes_list())

    async def list_documents(self) -> RouteList:
        return await self._client.run(calls.routes_answers())

    async def get(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteConfig:
        answer = await self._client.run(calls.route_get(path, method, protocol, index))
        return calls.route_model(answer.route)

    async def get_document(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteAnswer:
        return await self._client.run(calls.route_get(path, method, protocol, index))

    async def create(self, route: RouteInput) -> RouteAnswer:
        return await self._client.run(calls.route_create(route))

    async def update(
        self,
        route: RouteInput,
        *,
        method: str | None = None,
        protocol: str | None = None,
        index: int | None = None,
    ) -> RouteAnswer:
        return await self._client.run(calls.route_update(route, method, protocol, index))

    async def delete(
        self, path: str, *, method: str | None = None, protocol: str | None = None, index: int | None = None
    ) -> RouteAnswer:
        return await self._client.run(calls.route_delete(path, method, protocol, index))

    async def validate(self, route: RouteInput) -> RouteValidation:
        return await self._client.run(calls.route_validate(route))

    async def replace(
        self, routes: Sequence[RouteInput], *, generation: int | None = None, dry_run: bool = False
    ) -> RoutesReplaced:
        return await self._client.run(calls.routes_replace(routes, generation, dry_run))


class AsyncConfig:
    def __init__(self, client: AsyncKairosClient) -> None:
        self._client = client

    async def get(self) -> dict[str, Any]:
        return await self._client.run(calls.config_get())

    async def status(self) -> ConfigStatus:
        return await self._client.run(calls.config_status())

    async def reload(self) -> ConfigStatus:
        return await self._client.run(calls.config_reload())


class AsyncCache:
    def __init__(self, client: AsyncKairosClient) -> None:
        self._client = client

    async def purge(self, route: str | None = None, key_prefix: str | None = None) -> PurgeResult:
        return await self._client.run(calls.cache_purge(route, key_prefix))


def _stream_refused(url: str, exc: Exception) -> Exception:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        refused = f"the gateway refused the metrics stream at {url}/ws/metrics"
        if status in TOKEN_ADVICE:
            return Unauthorized(status, f"{TOKEN_ADVICE[status]} ({refused})", "unauthorized")
        return KairosAPIError(status, refused, "stream_refused")
    return KairosConnectionError(url, f"WebSocket handshake failed: {exc}")


def _stream_ended(url: str, closed: Exception) -> Exception | None:
    """None for a normal end of the stream (StopIteration follows), else the error to raise."""
    from websockets.exceptions import ConnectionClosed

    assert isinstance(closed, ConnectionClosed)
    received = closed.rcvd
    if received is not None and received.code in (1000, 1001):
        return None
    why = f"{received.code} {received.reason}".strip() if received is not None else "no close frame"
    return KairosConnectionError(url, f"the metrics stream ended: {why}")
