"""Property 5: proxy header rewriting on any header list.

Why: request headers are the client's, response headers the backend's; the proxy must strip
hop-by-hop headers both ways and be the only author of X-Forwarded-For and X-Request-ID (an
upstream that trusts X-Forwarded-For must not see a client's forgery next to ours).
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from kairos.middleware.headguard import HeadGuardMiddleware
from kairos.proxy.headers import downstream_response_headers, upstream_request_headers
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import asgi_header_lists, header_lists
from tests.fuzz.targets import Headers, check_downstream_headers, check_upstream_headers


@fuzz_settings(scale=3)
@given(asgi_header_lists)
@example([(b"connection", b"x-forwarded-for, keep-alive"), (b"x-forwarded-for", b"6.6.6.6")])
@example([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")])
@example([(b"x-request-id", b"evil\r\nx: 1"), (b"x-request-id", b"2")])
@example([(b"content-length", b"\xb2")])
def test_upstream_request_headers(headers: Headers) -> None:
    check_upstream_headers(headers)


@fuzz_settings(scale=3)
@given(header_lists)
@example([(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"DATE", b"x"), (b"X-Request-ID", b"up")])
@example([(b"Connection", b"X-Secret, close"), (b"x-secret", b"1"), (b"Keep-Alive", b"timeout=5")])
def test_downstream_response_headers(headers: Headers) -> None:
    check_downstream_headers(headers)


def test_repeated_headers_stay_repeated() -> None:
    out = downstream_response_headers([(b"Set-Cookie", b"a"), (b"Set-Cookie", b"b")], b"id")
    assert out == [(b"set-cookie", b"a"), (b"set-cookie", b"b"), (b"x-request-id", b"id")]


def test_content_length_of_5000_digits() -> None:
    """httptools (uvicorn's default parser) accepts ``Content-Length: 000...0`` of any length;
    ``int()`` refuses more than 4300 digits. Reproduced end to end: uvicorn + kairos answers 500."""
    upstream_request_headers(
        [(b"content-length", b"0" * 5000)], peer="1.2.3.4", peer_trusted=False, scheme="http", request_id="r"
    )


# Names as an ASGI server that preserves case would deliver them.
any_case_lists = st.lists(
    st.tuples(
        st.sampled_from(
            [b"X-Forwarded-For", b"Connection", b"Upgrade", b"X-Request-ID", b"Proxy-Authorization"]
        ),
        st.sampled_from([b"6.6.6.6", b"x-custom", b"websocket", b"forged"]),
    ),
    min_size=1,
    max_size=4,
)


@fuzz_settings()
@given(any_case_lists)
@example([(b"X-Forwarded-For", b"6.6.6.6")])
def test_upstream_request_headers_with_any_case_names(headers: Headers) -> None:
    """ASGI only says names "should" be lower-case: HeadGuardMiddleware lower-cases what a
    case-keeping server hands over before any layer reads it, so the proxy's rules hold whatever the
    server (upstream_request_headers itself compares lower-case names, as ASGI servers give them)."""
    scope: dict[str, Any] = {"type": "http", "http_version": "1.0", "method": "GET", "path": "/",
                             "headers": list(headers)}  # fmt: skip
    HeadGuardMiddleware(_never_called, max_header_bytes=1 << 30, max_headers=1 << 20).check(scope)
    check_upstream_headers(scope["headers"])


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("only check() is used")
