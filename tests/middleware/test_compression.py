"""CompressionMiddleware on its own: negotiation, what is left alone, headers, streaming."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import brotli
import pytest
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kairos.config import load_data
from kairos.config.policies import CompressionConfig
from kairos.middleware.compression import CompressionMiddleware, negotiate, parse_accept_encoding
from tests.asgi import AsgiClient, AsgiClients, RawResponse

TEXT = b"kairos compresses what is worth compressing. " * 100  # 4.5 KB
ALL = ("gzip", "brotli", "zstd", "deflate")


def decode(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(coding)


async def page(request: Request) -> Response:
    query = request.query_params
    size = int(query.get("size", str(len(TEXT))))
    headers = {key[2:]: value for key, value in query.items() if key.startswith("h-")}
    return Response(
        (TEXT * 10)[:size],
        status_code=int(query.get("status", "200")),
        media_type=query.get("type", "text/plain"),
        headers=headers,
    )


async def empty(request: Request) -> Response:
    return Response(status_code=204)


def app_with(policy: Any = None, **config: Any) -> CompressionMiddleware:
    app = Starlette(routes=[Route("/page", page, methods=["GET", "HEAD"]), Route("/empty", empty)])
    if policy is None:
        policy = CompressionConfig.model_validate(config)
    return CompressionMiddleware(app, policy)


def get(http: AsgiClient, path: str, accept: str | None = "gzip", method: str = "GET") -> RawResponse:
    """The response with its body as sent; ``accept`` None: no Accept-Encoding header at all."""
    return http.raw(method, path, headers={"Accept-Encoding": accept})


# -- negotiation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "algorithms", "expected"),
    [
        ("gzip", ("gzip",), "gzip"),
        ("gzip, br, zstd", ALL, "gzip"),  # equal q: the server's order
        ("gzip, br, zstd", ("zstd", "brotli", "gzip"), "zstd"),
        ("gzip;q=0.5, br", ALL, "brotli"),  # the client's q wins over the server's order
        ("br;q=0.2, gzip;q=0.8", ("brotli", "gzip"), "gzip"),
        ("gzip;q=0", ("gzip",), None),
        ("GZIP;Q=0, br", ("gzip", "brotli"), "brotli"),
        ("*", ALL, "gzip"),
        ("*;q=0", ALL, None),
        ("gzip;q=0, *", ("gzip", "brotli"), "brotli"),
        ("identity", ALL, None),
        ("identity;q=1, gzip;q=0.5", ALL, None),  # identity named with a higher q
        ("gzip;q=0.5", ALL, "gzip"),  # identity not named: never preferred
        ("x-gzip", ("gzip",), "gzip"),
        ("deflate", ("gzip",), None),  # not offered
        ("", ALL, None),
        ("gzip;q=abc, deflate", ALL, "deflate"),  # a malformed q drops the entry
        ("gzip;q=2", ("gzip",), None),
        (" gzip ; q=0.001 ", ("gzip",), "gzip"),
    ],
)
def test_negotiate(header: str, algorithms: tuple[str, ...], expected: str | None) -> None:
    assert negotiate(header, algorithms) == expected


def test_parse_accept_encoding_keeps_the_highest_q_of_a_repeated_coding() -> None:
    assert parse_accept_encoding("gzip;q=0.1, gzip;q=0.7, br") == {"gzip": 0.7, "br": 1.0}


# -- through a Starlette app ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "coding"), [("gzip", "gzip"), ("brotli", "br"), ("zstd", "zstd"), ("deflate", "deflate")]
)
def test_each_algorithm_round_trips(algorithm: str, coding: str, asgi_client: AsgiClients) -> None:
    response = get(asgi_client(app_with(algorithms=[algorithm])), "/page", accept=coding)
    assert response.headers["content-encoding"] == coding
    assert response.headers["vary"] == "Accept-Encoding"
    body = response.raw
    assert int(response.headers["content-length"]) == len(body) < len(TEXT)
    assert decode(coding, body) == TEXT


def test_identity_and_no_header_are_uncompressed_but_vary(asgi_client: AsgiClients) -> None:
    http = asgi_client(app_with(algorithms=list(ALL)))
    for accept in ("identity", None, "gzip;q=0", "compress"):
        response = get(http, "/page", accept=accept)
        assert "content-encoding" not in response.headers, accept
        assert response.raw == TEXT
        assert response.headers["content-length"] == str(len(TEXT))
        assert response.headers["vary"] == "Accept-Encoding"


def test_q_zero_refusal_falls_back_to_the_next_algorithm(asgi_client: AsgiClients) -> None:
    response = get(asgi_client(app_with(algorithms=["gzip", "brotli"])), "/page", accept="gzip;q=0, br")
    assert response.headers["content-encoding"] == "br"


def test_level_is_applied(asgi_client: AsgiClients) -> None:
    fast = get(asgi_client(app_with(level=1)), "/page?size=40000").raw
    best = get(asgi_client(app_with(level=9)), "/page?size=40000").raw
    assert gzip.decompress(fast) == gzip.decompress(best)
    assert (fast[8], best[8]) == (4, 2)  # the gzip header's XFL: fastest / best compression


def test_min_size_with_known_length(asgi_client: AsgiClients) -> None:
    http = asgi_client(app_with(min_size=1000))
    small = get(http, "/page?size=999")
    assert "content-encoding" not in small.headers
    assert "vary" not in small.headers  # the same bytes for every client
    assert get(http, "/page?size=1000").headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    ("media_type", "compressed"),
    [
        ("text/plain", True),
        ("application/json", True),
        ("text/html; charset=utf-8", True),
        ("Application/JSON;charset=UTF-8", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("", False),
    ],
)
def test_content_type_filter_ignores_parameters(
    media_type: str, compressed: bool, asgi_client: AsgiClients
) -> None:
    response = get(asgi_client(app_with()), f"/page?type={media_type}")
    assert ("content-encoding" in response.headers) is compressed
    assert ("vary" in response.headers) is compressed


def test_wildcard_content_types_and_event_stream_never(asgi_client: AsgiClients) -> None:
    app = app_with(content_types=["text/*"])
    assert get(asgi_client(app), "/page?type=text/csv").headers["content-encoding"] == "gzip"
    assert "content-encoding" not in get(asgi_client(app), "/page?type=application/json").headers
    app = app_with(content_types=["text/*", "text/event-stream"])
    response = get(asgi_client(app), "/page?type=text/event-stream")
    assert "content-encoding" not in response.headers
    assert response.raw == TEXT


def test_already_encoded_passes_through(asgi_client: AsgiClients) -> None:
    response = get(asgi_client(app_with()), "/page?h-content-encoding=br")
    assert response.headers["content-encoding"] == "br"
    assert response.raw == TEXT
    assert "vary" not in response.headers


def test_no_transform_is_respected(asgi_client: AsgiClients) -> None:
    response = get(asgi_client(app_with()), "/page?h-cache-control=public, no-transform")
    assert "content-encoding" not in response.headers
    assert response.raw == TEXT


@pytest.mark.parametrize(
    ("existing", "expected"),
    [("Origin", "Origin, Accept-Encoding"), ("accept-encoding", "accept-encoding"), ("*", "*")],
)
def test_vary_is_merged(existing: str, expected: str, asgi_client: AsgiClients) -> None:
    response = get(asgi_client(app_with()), f"/page?h-vary={existing}")
    assert response.headers.get_list("vary") == [expected]
    assert response.headers["content-encoding"] == "gzip"


def test_etag_is_weakened_only_when_compressed(asgi_client: AsgiClients) -> None:
    http = asgi_client(app_with())
    assert get(http, '/page?h-etag="abc"').headers["etag"] == 'W/"abc"'
    assert get(http, '/page?h-etag=W/"abc"').headers["etag"] == 'W/"abc"'
    assert get(http, '/page?h-etag="abc"', accept="identity").headers["etag"] == '"abc"'


def test_head_204_206_304_untouched(asgi_client: AsgiClients) -> None:
    http = asgi_client(app_with())
    head = get(http, "/page", method="HEAD")
    assert "content-encoding" not in head.headers and "vary" not in head.headers
    assert head.headers["content-length"] == str(len(TEXT))
    for status in (206, 304):
        response = get(http, f"/page?status={status}")
        assert "content-encoding" not in response.headers, status
    assert get(http, "/empty").status_code == 204


def test_off_when_no_policy_or_disabled(asgi_client: AsgiClients) -> None:
    for app in (app_with(lambda: None), app_with(enabled=False)):
        response = get(asgi_client(app), "/page")
        assert "content-encoding" not in response.headers
        assert "vary" not in response.headers


def test_a_live_policy_is_read_per_request(asgi_client: AsgiClients) -> None:
    current: list[CompressionConfig | None] = [None]
    http = asgi_client(app_with(lambda: current[0]))
    assert "content-encoding" not in get(http, "/page").headers
    current[0] = CompressionConfig(algorithms=("brotli",))
    assert get(http, "/page", accept="gzip, br").headers["content-encoding"] == "br"


def test_a_large_body_is_compressed_off_the_event_loop() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB in one message: compressed in a worker thread

    async def one_message(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    messages = run_raw(CompressionMiddleware(one_message), "gzip")
    assert gzip.decompress(messages[1]["body"]) == body


# -- streams, driven message by message -----------------------------------------------------------


def run_raw(app: Any, accept: str, method: str = "GET") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": "/",
        "headers": [(b"accept-encoding", accept.encode())],
    }
    asyncio.run(app(scope, receive, send))
    return sent


def streaming_app(chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        start_headers = headers if headers is not None else [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@pytest.mark.parametrize(("algorithm", "coding"), [("gzip", "gzip"), ("brotli", "br"), ("zstd", "zstd")])
def test_a_stream_is_compressed_and_flushed_chunk_by_chunk(algorithm: str, coding: str) -> None:
    chunks = [TEXT[:2000], TEXT[2000:3000], TEXT[3000:]]
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(TEXT)).encode()),
        (b"etag", b'"v1"'),
    ]
    config = CompressionConfig(algorithms=(algorithm,))
    messages = run_raw(CompressionMiddleware(streaming_app(chunks, headers), config), coding)
    start, bodies = messages[0], messages[1:]
    names = dict(start["headers"])
    assert b"content-length" not in names
    assert names[b"content-encoding"] == coding.encode()
    assert names[b"etag"] == b'W/"v1"'
    assert len(bodies) == 4  # one per chunk (each flushed), then the end
    # Every flushed chunk decodes, on its own stream position, to exactly what was sent so far.
    if coding == "gzip":
        decoder: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        step = decoder.decompress
    elif coding == "br":
        decoder = brotli.Decompressor()
        step = decoder.process
    else:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        step = decoder.decompress
    received = b""
    for index in range(len(chunks)):
        received += step(bodies[index]["body"])
        assert received == b"".join(chunks[: index + 1])
    assert bodies[-1]["more_body"] is False
    received += step(bodies[-1]["body"])
    assert received == TEXT


def test_unknown_length_is_buffered_up_to_min_size() -> None:
    config = CompressionConfig(min_size=1024)
    small = run_raw(CompressionMiddleware(streaming_app([b"a" * 300, b"b" * 300]), config), "gzip")
    names = dict(small[0]["headers"])
    assert b"content-encoding" not in names
    assert names[b"vary"] == b"Accept-Encoding"
    assert b"".join(m.get("body", b"") for m in small[1:]) == b"a" * 300 + b"b" * 300

    chunks = [b"a" * 600, b"b" * 600, b"c" * 600]
    large = run_raw(CompressionMiddleware(streaming_app(chunks), config), "gzip")
    assert dict(large[0]["headers"])[b"content-encoding"] == b"gzip"
    # Nothing went out before 1024 bytes were there; then one compressed piece per chunk.
    assert len(large) == 1 + 2 + 1
    assert gzip.decompress(b"".join(m["body"] for m in large[1:])) == b"".join(chunks)


def test_websocket_and_lifespan_scopes_pass() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        raise AssertionError("nothing to receive")

    async def send(message: Message) -> None:
        raise AssertionError(message)

    app = CompressionMiddleware(inner)
    for kind in ("websocket", "lifespan"):
        asyncio.run(app({"type": kind, "headers": []}, receive, send))
    assert seen == ["websocket", "lifespan"]


def test_standalone_default_is_gzip(asgi_client: AsgiClients) -> None:
    http = asgi_client(
        CompressionMiddleware(Starlette(routes=[Route("/", lambda r: PlainTextResponse(TEXT.decode()))]))
    )
    assert get(http, "/", accept="gzip, br").headers["content-encoding"] == "gzip"


# -- config ---------------------------------------------------------------------------------------


def test_config_normalises_types_and_rejects_nonsense() -> None:
    config = CompressionConfig.model_validate(
        {"content_types": ["Text/HTML; charset=utf-8", "text/html", "text/*"], "algorithms": ["gzip", "gzip"]}
    )
    assert config.content_types == ("text/html", "text/*")
    assert config.algorithms == ("gzip",)
    with pytest.raises(ValueError, match="not a media type"):
        CompressionConfig.model_validate({"content_types": ["json"]})


def test_loader_warns_about_algorithms_without_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"version": 1, "routers": [], "compression": {"algorithms": ["zstd", "brotli", "gzip"]}}
    assert not [w for w in load_data(raw).warnings if w.path == "compression.algorithms"]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "zstandard" else real(name, *a)
    )
    warnings = [str(w) for w in load_data(raw).warnings if w.path == "compression.algorithms"]
    assert len(warnings) == 1 and "zstd" in warnings[0]
