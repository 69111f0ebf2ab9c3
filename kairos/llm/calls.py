"""Provider calls for LLM routes: the ordered targets of a public model, tried until one answers.

**Fallback only before the first byte.** A target that fails before it answers (a status in
``on_status_codes``, a timeout, a connection error) is retried after its ``Retry-After`` when it
has ``max_retries`` left and the wait fits its timeout, else the next target is asked. A stream is
only handed to the client once its first chunk has arrived, so everything up to that point can
still fail over; after it, a failing stream cannot be replayed without duplicating what the client
already has, and the endpoint ends it with an SSE error event and an aborted connection.

Any other provider error (a 400 for a bad request, a 401 for a bad key...) is not another target's
business: it is answered as it is, in OpenAI's error shape, its message scrubbed of keys.

Each target is called through its transport (kairos/llm/transport.py: direct HTTP for OpenAI's wire,
litellm's SDK for the rest), neither retrying on its own: the gateway decides. Both fail the same way
for this module: an exception with ``status_code`` and the provider's headers (``Retry-After``), or a
timeout, or no connection (litellm's classes, or the transport module's).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kairos.ai.provider import ensure_litellm, scrub_keys
from kairos.config.llm import LlmConfig, LlmTarget
from kairos.llm.sdk import close_stream
from kairos.llm.transport import Events, Payload, ProviderTimeout, ProviderUnreachable, Transports


@dataclass(slots=True)
class Attempted:
    """What the calls of one request did, for headers, metrics and analytics."""

    fallbacks: int = 0  # targets given up on before the one that answered
    calls: int = 0  # provider calls made (retries included)
    target: LlmTarget | None = None  # the one that answered
    transport: str = ""  # how it was called: "direct" or "litellm"
    errors: list[str] = field(default_factory=list)


class ProviderFailed(Exception):
    """No target answered. ``status`` and ``kind`` are what the client gets (OpenAI's error shape):
    the last provider error when it is the client's business, else 502/504 from the gateway."""

    def __init__(self, status: int, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.code = code


def targets_of(config: LlmConfig, model: str) -> list[LlmTarget]:
    """The model's targets (the first by weight when weights differ), then its fallbacks' targets."""
    entry = config.models[model]
    own = list(entry.targets)
    if len(own) > 1 and any(target.weight != own[0].weight for target in own):
        first = random.choices(own, weights=[target.weight for target in own])[0]
        own.remove(first)
        own.insert(0, first)
    chain = own
    for fallback in entry.fallbacks:
        chain += [target for target in config.models[fallback].targets if target not in chain]
    return chain


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _is_timeout(exc: BaseException, litellm: Any) -> bool:
    return isinstance(exc, TimeoutError | ProviderTimeout | litellm.Timeout) or _status(exc) == 408


def _is_connection(exc: BaseException, litellm: Any) -> bool:
    return isinstance(exc, ProviderUnreachable | litellm.APIConnectionError | ConnectionError | OSError)


def _secrets(targets: Sequence[LlmTarget]) -> list[str]:
    return [target.api_key.get_secret_value() for target in targets if target.api_key is not None]


OPERATIONS = {"chat": "chat", "text": "text_completion", "embedding": "embeddings"}  # gen_ai.operation.name


Stream = tuple[list[Payload], Events]  # the first batch of events, and the others


async def call(
    config: LlmConfig,
    model: str,
    kind: str,
    params: dict[str, Any],
    attempted: Attempted,
    transports: Transports,
    tracer: Any = None,
) -> Payload | Stream:
    """The provider's answer for ``kind`` (``chat``, ``text``, ``embedding``), from the first target
    that gives one. For a stream (``params["stream"]``, not for embeddings) the answer is ``(first,
    rest)``: the first event already received, and the async iterator of the others.

    With ``tracer`` (KAIROS_TRACING on), each provider call is a CLIENT span named as OpenTelemetry's
    GenAI conventions say (``chat gpt-4o-mini``), with ``gen_ai.*`` attributes; it ends when the answer
    (a stream: its first chunk) arrived or the call failed."""
    litellm = await ensure_litellm()
    targets = targets_of(config, model)
    fallback_statuses = frozenset(config.on_status_codes)
    last: ProviderFailed | None = None
    for position, target in enumerate(targets):
        retries = target.max_retries
        timeout = target.timeout_ms / 1000
        transport = transports.for_target(target, kind, litellm)
        while True:
            attempted.calls += 1
            started = time.monotonic()
            span = _span(tracer, kind, target, attempted.calls, transport.name)
            stream: Events | None = None
            try:
                async with asyncio.timeout(timeout):
                    answer = await transport.call(kind, params, timeout)
                    if not isinstance(answer, Payload):  # a stream: its first event, or a failure
                        stream = answer
                        first = await anext(stream)
                attempted.target = target
                attempted.fallbacks = position
                attempted.transport = transport.name
                _end(span, None)
                if stream is None:
                    assert isinstance(answer, Payload)
                    return answer
                return first, stream
            except StopAsyncIteration:  # an empty stream: nothing to hand over, as if it failed
                last = ProviderFailed(502, "upstream", f"{target.label} sent an empty stream")
                _end(span, "empty_stream")
            except Exception as exc:  # litellm raises its own classes, httpx's, openai's; direct ours
                if stream is not None:
                    await close_stream(stream)
                _end(span, type(exc).__name__)
                status = _status(exc)
                message = scrub_keys(f"{type(exc).__name__}: {exc}", _secrets(targets))[:500]
                attempted.errors.append(f"{target.label}: {message}")
                if _is_timeout(exc, litellm):
                    last = ProviderFailed(504, "timeout", f"{target.label} did not answer in {timeout:.3g} s")
                elif status is not None and status not in fallback_statuses:
                    raise ProviderFailed(
                        status, _kind_of(status), message, getattr(exc, "code", None)
                    ) from None
                elif status is None and not _is_connection(exc, litellm):
                    raise ProviderFailed(502, "upstream", message) from None
                else:
                    if status == 429:  # every target busy: the client may retry later, as it would direct
                        last = ProviderFailed(429, "rate_limit_error", message, "rate_limit_exceeded")
                    else:  # a provider's 5xx or no connection: the gateway could not get an answer
                        last = ProviderFailed(502, "upstream", message)
                    wait = _retry_after(exc)
                    left = timeout - (time.monotonic() - started)
                    if retries > 0 and (wait is None or wait < left):
                        retries -= 1
                        await asyncio.sleep(wait or 0.0)
                        continue
            if retries > 0:
                retries -= 1
                continue
            break
    assert last is not None
    if len(targets) > 1:
        last.message = f"every target of {model} failed; the last: {last.message}"
    raise last


def _span(tracer: Any, kind: str, target: LlmTarget, call_number: int, transport: str) -> Any:
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    operation = OPERATIONS[kind]
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": target.provider,
        "gen_ai.request.model": target.model,
        "kairos.llm.call": call_number,
        "kairos.llm.transport": transport,
    }
    if target.api_base is not None:
        host = target.api_base.split("://", 1)[-1].split("/", 1)[0]
        attributes["server.address"] = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return tracer.start_span(f"{operation} {target.model}", kind=SpanKind.CLIENT, attributes=attributes)


def _end(span: Any, error: str | None) -> None:
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _kind_of(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "api_error")
