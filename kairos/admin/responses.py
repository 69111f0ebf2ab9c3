"""What every admin endpoint answers with: JSON, always, including when something goes wrong.

The admin router sits inside the outer Starlette app, so an unknown admin path, a wrong method or
an exception in a handler would otherwise get Starlette's plain-text "Not Found" / "Method Not
Allowed" / "Internal Server Error". ``AdminErrors`` wraps the admin router and renders those as
the gateway's error JSON (``kairos.errors``: ``{"error","type","timestamp","request_id"}``), with
``Allow`` on a 405 and the traceback in the log, never in the body.

``read_json`` reads a request body with a size bound and turns malformed JSON into a 400 that
names the problem (kairos-rs answered actix's plain-text 400).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.errors import STATUS_BY_TYPE, error_body, send_error

logger = logging.getLogger("kairos.admin")

MAX_BODY_BYTES = 10 * 1024 * 1024  # a whole config.json may be at most this (the loader's limit)

_KIND_BY_STATUS = {status: kind for kind, status in reversed(list(STATUS_BY_TYPE.items()))}
_KIND_BY_STATUS.update(
    {400: "bad_request", 404: "route_not_found", 409: "conflict", 413: "payload_too_large"}
)


class BadRequest(Exception):
    """A request the admin API cannot act on; rendered as ``status`` with the gateway error JSON."""

    def __init__(self, message: str, status: int = 400, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


def error_response(
    message: str, status: int = 400, kind: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    request_id = str(uuid.uuid4())
    body = error_body(kind or _KIND_BY_STATUS.get(status, "bad_request"), message, request_id)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"x-request-id": request_id, **(headers or {})},
    )


def answer(model: BaseModel, status: int = 200) -> JSONResponse:
    """An admin answer from its shared model (kairos/api_models.py): only the fields the handler
    set are sent, so the JSON is what the handler built and the client parses it back as is."""
    return JSONResponse(model.model_dump(mode="json", exclude_unset=True), status_code=status)


async def read_json(request: Request) -> Any:
    """The parsed JSON body. Raises BadRequest (400/413) naming what is wrong with it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes", 413, "payload_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("request body is empty: a JSON document is required")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BadRequest(f"malformed JSON body: {exc}") from None


def http_error_message(method: str, path: str, status: int, detail: str, what: str = "endpoint") -> str:
    if status == 404:
        return f"No {what} at {path}"
    if status == 405:
        return f"Method {method} not allowed for {what} {path}"
    return detail


async def json_http_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for the app around the gateway: its own 404/405 (a path the
    admin Mount's pattern cannot take, such as one with an encoded newline, or ``POST /health``)
    answer the gateway's error JSON instead of plain text."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    message = http_error_message(request.method, request.url.path, exc.status_code, exc.detail)
    return error_response(message, exc.status_code, headers=dict(exc.headers or {}))


class AdminErrors:
    """Renders what the admin router would answer in plain text as JSON (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except HTTPException as exc:
            if started:
                raise
            # Mount keeps the full path in `path`.
            message = http_error_message(
                scope["method"], scope["path"], exc.status_code, exc.detail, "admin endpoint"
            )
            kind = _KIND_BY_STATUS.get(exc.status_code, "bad_request")
            headers = [(name.lower().encode(), value.encode()) for name, value in (exc.headers or {}).items()]
            await send_error(send, kind, message, str(uuid.uuid4()), headers, status=exc.status_code)
        except Exception:
            if started:
                raise  # the only honest signal once a response has begun: drop the connection
            request_id = str(uuid.uuid4())
            logger.exception(
                "admin API: unexpected error in %s %s (%s)", scope["method"], scope["path"], request_id
            )
            await send_error(send, "internal", "Internal error in the admin API", request_id)
