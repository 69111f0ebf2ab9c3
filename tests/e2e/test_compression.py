"""Compression through the real gateway (uvicorn) against tests/servers/compress_upstream.py."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard

from tests.processes import Server, backend, free_port, gateway_server, route, rss_bytes, server_process
from tests.servers.compress_upstream import text

ALGORITHMS = ["gzip", "brotli", "zstd", "deflate"]


@pytest.fixture(scope="module")
def compress_upstream(module_tmp: Path) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "tests.servers.compress_upstream", "--port", str(port)]
    with server_process(args, port, module_tmp / f"compress-upstream-{port}.log") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, compress_upstream: Server) -> Iterator[Server]:
    up = [backend(compress_upstream)]
    config = {
        "version": 1,
        "compression": {
            "enabled": True,
            "level": 6,
            "min_size": 1024,
            "content_types": ["text/*", "application/json"],
            "algorithms": ALGORITHMS,
        },
        "routers": [
            route("/text", "/text", up, ("GET", "HEAD")),
            route("/sse", "/sse", up),
            route("/slow", "/slow", up),
            route("/big", "/big", up, timeout_ms=60000),
            route("/not-modified", "/not-modified", up),
            route("/cached", "/text", up, cache={"enabled": True, "ttl_secs": 60}),
        ],
    }
    with gateway_server(module_tmp, config) as server:
        yield server


def fetch(
    client: httpx.Client, path: str, accept: str | None = "gzip", method: str = "GET"
) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent on the wire (httpx would decode it otherwise)."""
    request = client.build_request(method, path)
    del request.headers["Accept-Encoding"]
    if accept is not None:
        request.headers["Accept-Encoding"] = accept
    response = client.send(request, stream=True)
    try:
        return response, b"".join(response.iter_raw())
    finally:
        response.close()


def test_gzip_is_negotiated_and_decodes_to_the_original(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000", "gzip, deflate")
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert len(raw) < 2000
    assert gzip.decompress(raw) == text(20000)
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(raw)


def test_identity_or_no_accept_encoding_is_uncompressed(client: httpx.Client) -> None:
    for accept in ("identity", None, "gzip;q=0", "*;q=0"):
        response, raw = fetch(client, "/text?size=20000", accept)
        assert "content-encoding" not in response.headers, accept
        assert response.headers["vary"] == "Accept-Encoding"
        assert raw == text(20000)


def test_q_zero_refuses_a_coding(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000", "gzip;q=0, br;q=0.5, zstd;q=0.4")
    assert response.headers["content-encoding"] == "br"
    assert brotli.decompress(raw) == text(20000)


@pytest.mark.parametrize("coding", ["br", "zstd", "deflate"])
def test_brotli_zstd_and_deflate(client: httpx.Client, coding: str) -> None:
    response, raw = fetch(client, "/text?size=50000", coding)
    assert response.headers["content-encoding"] == coding
    if coding == "br":
        body = bytes(brotli.decompress(raw))
    elif coding == "zstd":
        body = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    else:
        body = zlib.decompress(raw)
    assert body == text(50000)


def test_server_order_breaks_ties(client: httpx.Client) -> None:
    response, _ = fetch(client, "/text?size=20000", "zstd, br, gzip")
    assert response.headers["content-encoding"] == "gzip"  # first in `algorithms`


def test_min_size_known_and_unknown_length(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=1000")
    assert "content-encoding" not in response.headers and raw == text(1000)
    response, raw = fetch(client, "/text?size=800&chunked=1&chunk=100")
    assert "content-encoding" not in response.headers and raw == text(800)
    response, raw = fetch(client, "/text?size=30000&chunked=1&chunk=500")
    assert response.headers["content-encoding"] == "gzip"
    assert "content-length" not in response.headers
    assert gzip.decompress(raw) == text(30000)


def test_content_type_filter_ignores_parameters(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000&type=application/octet-stream")
    assert "content-encoding" not in response.headers and "vary" not in response.headers
    assert raw == text(20000)
    response, raw = fetch(client, "/text?size=20000&type=application/json; charset=utf-8")
    assert response.headers["content-encoding"] == "gzip"


def test_an_already_encoded_body_passes_through(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000&gzip=1", "gzip, br")
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == text(20000)  # encoded once, by the upstream


def test_no_transform_is_respected(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000&cc=no-transform")
    assert "content-encoding" not in response.headers and raw == text(20000)


def test_vary_is_merged_and_etag_weakened(client: httpx.Client) -> None:
    response, _ = fetch(client, '/text?size=20000&vary=Origin&etag="abc"')
    assert response.headers.get_list("vary") == ["Origin, Accept-Encoding"]
    assert response.headers["etag"] == 'W/"abc"'
    response, _ = fetch(client, '/text?size=20000&etag="abc"', "identity")
    assert response.headers["etag"] == '"abc"'


def test_head_and_304_are_untouched(client: httpx.Client) -> None:
    response, raw = fetch(client, "/text?size=20000", method="HEAD")
    assert response.status_code == 200 and raw == b""
    assert "content-encoding" not in response.headers and "vary" not in response.headers
    assert response.headers["content-length"] == "20000"
    response, raw = fetch(client, "/not-modified")
    assert response.status_code == 304 and raw == b""
    assert "content-encoding" not in response.headers and "vary" not in response.headers
    assert response.headers["etag"] == '"v1"'


def test_small_gateway_errors_are_left_alone(client: httpx.Client) -> None:
    response, raw = fetch(client, "/no-such-route")
    assert response.status_code == 404
    assert "content-encoding" not in response.headers
    assert b"route_not_found" in raw


def test_cache_hits_are_compressed_per_client(client: httpx.Client) -> None:
    first, raw = fetch(client, "/cached?size=8000")
    assert first.headers["content-encoding"] == "gzip"
    second, raw = fetch(client, "/cached?size=8000")
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == text(8000)
    plain, raw = fetch(client, "/cached?size=8000", "identity")
    assert plain.headers["x-cache"] == "HIT"
    assert "content-encoding" not in plain.headers and raw == text(8000)


def test_sse_is_not_compressed_and_still_streams(gateway: Server) -> None:
    started = time.monotonic()
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream("GET", "/sse?events=3&delay=0.6", headers={"Accept-Encoding": "gzip, br"}) as response,
    ):
        assert "content-encoding" not in response.headers
        arrivals = []
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            arrivals.append((time.monotonic() - started, received.count(b"\n\n")))
    first_event = next(at for at, events in arrivals if events >= 1)
    assert first_event < 0.5, arrivals
    assert arrivals[-1][0] >= 1.1 and arrivals[-1][1] == 3


def test_a_slow_stream_is_flushed_as_it_comes(gateway: Server) -> None:
    started = time.monotonic()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream(
            "GET", "/slow?first=4096&delay=1&rest=4096", headers={"Accept-Encoding": "gzip"}
        ) as response,
    ):
        assert response.headers["content-encoding"] == "gzip"
        decoded = b""
        first_at = None
        for chunk in response.iter_raw():
            decoded += decoder.decompress(chunk)
            if first_at is None and len(decoded) >= 4096:
                first_at = time.monotonic() - started
    assert first_at is not None and first_at < 0.8  # before the upstream's pause ended
    assert decoded == text(4096) + text(4096)


def test_a_large_stream_is_compressed_incrementally_in_bounded_memory(gateway: Server) -> None:
    size = 48 * 1024 * 1024
    with httpx.Client(base_url=gateway.url, timeout=60) as client:  # warm up
        fetch(client, "/big?size=1048576")
    baseline, _ = rss_bytes(gateway.pid)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoded = wire = 0
    pieces = 0
    with (
        httpx.Client(base_url=gateway.url, timeout=60) as client,
        client.stream("GET", f"/big?size={size}", headers={"Accept-Encoding": "gzip"}) as response,
    ):
        assert response.headers["content-encoding"] == "gzip"
        for chunk in response.iter_raw():
            wire += len(chunk)
            decoded += len(decoder.decompress(chunk))
            pieces += 1
    decoded += len(decoder.flush())
    _, peak = rss_bytes(gateway.pid)
    assert decoded == size
    assert wire < size // 20
    assert pieces > 10  # arrived as a stream, not as one compressed blob at the end
    assert peak - baseline < 32 * 1024 * 1024, f"gateway grew by {(peak - baseline) / 2**20:.1f} MiB"
