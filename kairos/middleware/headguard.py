"""HeadGuardMiddleware: the request head's own rules, checked before anything reads it.

- **Size and count limits** (``KAIROS_MAX_HEADER_BYTES``, default 64 KiB, ``KAIROS_MAX_HEADERS``,
  default 100 — Envoy's defaults): a larger head is refused with 431 ``headers_too_large``, so an
  8 MB header or 20,000 header lines are never matched, logged or forwarded. The size counts the
  request line and every header line as they were sent (CRLFs included), which is what the
  connection guard under ``kairos run`` (kairos/server.py) counts before the app sees anything; this
  layer is what protects the gateway under a bare ASGI server, from what the server passes on.
- **Host** (RFC 9112 §3.2): an HTTP/1.1 request without ``Host``, or any request with two, is a 400
  ``bad_request`` before routing; proxies and caches that read another Host than the gateway did are
  how request-routing confusion starts.
- **Lower-case names**: a server that hands header names in their original case gets them
  lower-cased here, since every later layer compares lower-case names.

One pass over the headers per request (a length and an equality per header); nothing is copied.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.errors import reject
from kairos.request import request_id_and_ip

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
# ": " and CRLF around each header line; " ", " HTTP/1.1" and CRLF around the request line.
_LINE_FRAMING = 4
_REQUEST_LINE_FRAMING = 12


class HeadGuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        if max_header_bytes < 1 or max_headers < 1:
            raise ValueError("max_header_bytes and max_headers must be at least 1")
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.check(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        kind, message = problem
        request_id, _ = request_id_and_ip(scope)
        await reject(scope, send, kind, message, request_id, headers=[(b"connection", b"close")])

    def check(self, scope: Scope) -> tuple[str, str] | None:
        """``(error type, message)`` when the head breaks a rule, else None."""
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            return "headers_too_large", (
                f"Request has {len(headers)} header fields; the limit is {self.max_headers}"
            )
        target = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string")
        size = len(scope.get("method", "GET")) + len(target) + _REQUEST_LINE_FRAMING
        if query:
            size += len(query) + 1
        hosts = 0
        upper = False
        for name, value in headers:
            size += len(name) + len(value) + _LINE_FRAMING
            if name == b"host":
                hosts += 1
            elif not name.islower() and name != name.lower():
                upper = True
        if upper:
            # ASGI says header names "should" be lower-cased, not "must": every rule downstream
            # compares lower-case names, so a server that keeps case would let a forged
            # X-Forwarded-For through beside the gateway's own (found by tests/fuzz).
            headers = scope["headers"] = [(name.lower(), value) for name, value in headers]
            hosts = sum(1 for name, _ in headers if name == b"host")
        if size > self.max_header_bytes:
            return "headers_too_large", (
                f"Request head is {size} bytes; the limit is {self.max_header_bytes}"
            )
        if hosts > 1:
            return "bad_request", "Request has more than one Host header"
        if hosts == 0 and scope.get("http_version") == "1.1":
            return "bad_request", "HTTP/1.1 request without a Host header"
        return None
