"""HeadGuardMiddleware as a raw ASGI layer: the head limits and the Host rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from kairos.middleware.headguard import HeadGuardMiddleware
from tests.middleware.test_context import run as run_app


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def run(
    headers: list[tuple[bytes, bytes]], version: str = "1.1", kind: str = "http", **options: Any
) -> list[Message]:
    app = HeadGuardMiddleware(_ok, **options)
    scope: dict[str, Any] = {
        "type": kind,
        "http_version": version,
        "method": "GET",
        "path": "/a",
        "raw_path": b"/a",
        "query_string": b"",
        "headers": headers,
    }
    if kind == "websocket":
        scope["extensions"] = {"websocket.http.response": {}}
    return run_app(app, scope)


def status_and_type(sent: list[Message]) -> tuple[int, str | None]:
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, (json.loads(body)["type"] if status != 200 else None)


HOST = [(b"host", b"example")]


def test_a_normal_head_passes() -> None:
    assert status_and_type(run([*HOST, (b"accept", b"*/*")])) == (200, None)


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([], "1.1", (400, "bad_request")),  # HTTP/1.1 needs Host
        ([], "1.0", (200, None)),  # HTTP/1.0 does not
        ([(b"host", b"a"), (b"host", b"b")], "1.1", (400, "bad_request")),
        ([(b"host", b"a"), (b"host", b"a")], "1.0", (400, "bad_request")),
        ([(b"host", b"")], "1.1", (200, None)),  # empty is allowed (RFC 9112 §3.2)
    ],
)
def test_host_rules(
    headers: list[tuple[bytes, bytes]], version: str, expected: tuple[int, str | None]
) -> None:
    assert status_and_type(run(headers, version)) == expected


def test_too_many_header_fields_is_431() -> None:
    headers = [*HOST, *[(b"x-h", b"1")] * 99]
    assert status_and_type(run(headers)) == (200, None)  # 100 fields: the limit itself
    assert status_and_type(run([*headers, (b"x-h", b"1")])) == (431, "headers_too_large")
    assert status_and_type(run(headers, max_headers=50)) == (431, "headers_too_large")


def test_a_head_over_the_byte_limit_is_431() -> None:
    assert status_and_type(run([*HOST, (b"x-big", b"a" * 60_000)])) == (200, None)
    assert status_and_type(run([*HOST, (b"x-big", b"a" * 66_000)])) == (431, "headers_too_large")
    assert status_and_type(run([*HOST, (b"x-big", b"a" * 3000)], max_header_bytes=2048))[0] == 431


def test_the_refusal_closes_the_connection_and_covers_websocket_upgrades() -> None:
    sent = run([*HOST, *[(b"x-h", b"1")] * 200])
    assert (b"connection", b"close") in sent[0]["headers"]
    upgrade = run([(b"host", b"a"), (b"host", b"b")], kind="websocket")
    assert upgrade[0]["type"] == "websocket.http.response.start" and upgrade[0]["status"] == 400


def test_header_names_from_a_case_keeping_server_are_lower_cased() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def record(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])
        await _ok(scope, receive, send)

    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "headers": [(b"Host", b"a"), (b"X-Forwarded-For", b"6.6.6.6"), (b"x-1", b"b")],
    }
    run_app(HeadGuardMiddleware(record), scope)
    assert seen == [[(b"host", b"a"), (b"x-forwarded-for", b"6.6.6.6"), (b"x-1", b"b")]]
