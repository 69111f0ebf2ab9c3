"""What an AI routing decision may know about a request, made safe to send to a third party.

The context is the method, the path (with its query), a safe subset of the headers and the first
``body_preview_chars`` characters of the body. It leaves the gateway, so:

- headers whose name contains ``auth``, ``cookie``, ``token``, ``key``, ``secret``, ``session``,
  ``passw``, ``csrf`` or ``signature`` are never sent, nor per-hop / per-request ones (``host``,
  ``content-length``, ``x-request-id``, ``traceparent``, ``x-forwarded-*`` …): those never help to
  choose a backend and would make every request's fingerprint unique (no cache hit ever). At most
  ``MAX_HEADERS`` are kept, sorted by name, each value cut to ``MAX_HEADER_VALUE`` characters;
- in the path, query, header values and body: e-mail addresses, card-like digit runs (13 to 19 digits,
  spaces or dashes allowed), ``Bearer`` tokens, JWTs, API-key-like strings (well-known prefixes such
  as ``sk-``, ``AKIA``, ``ghp_``, ``xox?-``, ``AIza``, and any 32+ character run mixing letters and
  digits) and the values of JSON fields / form or query parameters named like a secret are
  replaced by ``[REDACTED:<kind>]``;
- the body is redacted over ``body_preview_chars + REDACT_MARGIN`` characters and only then cut, so
  a secret straddling the cut is still recognised whole;
- a body whose ``Content-Type`` is not textual (JSON, text, XML, forms, GraphQL …) is described
  (``[binary body: image/png]``), never decoded.

Whitespace runs of the preview are collapsed (kairos-rs replaced CR/LF by spaces): it is shorter,
and two requests that differ only in formatting get the same fingerprint, so the same cached
decision.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

SENSITIVE_PARTS = ("auth", "cookie", "token", "key", "secret", "session", "passw", "csrf", "signature")
VOLATILE_HEADERS = frozenset(
    {
        "host", "content-length", "connection", "keep-alive", "te", "trailer", "transfer-encoding",
        "upgrade", "expect", "x-request-id", "x-correlation-id", "traceparent", "tracestate",
        "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "b3", "x-amzn-trace-id",
        "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
        "x-real-ip", "date", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since",
        "cache-control", "pragma", "accept-encoding", "content-md5", "idempotency-key",
    }
)  # fmt: skip
MAX_HEADERS = 10
MAX_HEADER_VALUE = 200
MAX_PATH = 1000
REDACT_MARGIN = 256
TEXTUAL_TYPES = ("text/", "json", "xml", "x-www-form-urlencoded", "graphql", "javascript", "yaml", "csv")

_SECRET_NAME = (
    r"[\w.-]*(?:passw|secret|token|api[_-]?key|apikey|auth|session|credential|private[_-]?key)[\w.-]*"
)
# (needle, pattern, replacement) in order: structured secrets first, then the shapes of values. A rule
# runs only when its needle ("" = always) is in the text: most header values and paths hold none.
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # "password": "..." in JSON (the value only; the field name helps routing and is harmless)
    ('"', re.compile(r'("' + _SECRET_NAME + r'"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I), r'\1"[REDACTED:secret]"'),
    # password=... in forms and query strings
    ("=", re.compile(r"(?<![\w.-])(" + _SECRET_NAME + r")=([^&\s\"']+)", re.I), r"\1=[REDACTED:secret]"),
    ("", re.compile(r"\bbearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), "Bearer [REDACTED:token]"),
    ("eyJ", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[REDACTED:token]"),
    ("@", re.compile(r"[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[REDACTED:email]"),
    (
        "",
        re.compile(
            r"\b(?:sk|pk|rk)[-_](?:live[-_]|test[-_]|proj[-_]|ant[-_])?[A-Za-z0-9_-]{16,}"
            r"|\bAKIA[0-9A-Z]{16}\b|\bgh[opsur]_[A-Za-z0-9]{20,}|\bxox[abposr]-[A-Za-z0-9-]{10,}"
            r"|\bAIza[0-9A-Za-z_-]{30,}|\bglpat-[A-Za-z0-9_-]{20,}"
        ),
        "[REDACTED:api_key]",
    ),
    ("", re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"), "[REDACTED:card]"),
    # Anything long that mixes letters and digits looks like a credential, a hash or a signature.
    ("", re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}"),
     "[REDACTED:api_key]"),
)  # fmt: skip
# Text that matches none of these cannot match any rule (a 13-digit card run holds 4 digits in a row
# or separated; every key shape holds 16 word characters in a row): returned as it is, at once.
_CANDIDATE = re.compile(r"[@=\"]|\d[ -]?\d[ -]?\d[ -]?\d|[A-Za-z0-9_-]{16}|eyJ|bearer", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every e-mail, card number, token and key-like string replaced."""
    if _CANDIDATE.search(text) is None:
        return text
    for needle, pattern, replacement in _RULES:
        if needle in text:
            text = pattern.sub(replacement, text)
    return text


def is_sensitive_header(name: str) -> bool:
    return any(part in name for part in SENSITIVE_PARTS)


_NAMES: dict[bytes, str | None] = {}  # raw header name -> name to send, or None: never sent
_NAMES_LIMIT = 1024


def _header_name(raw: bytes) -> str | None:
    """Whether a header may be sent, decided once per distinct name (names repeat on every request)."""
    try:
        return _NAMES[raw]
    except KeyError:
        pass
    name = raw.decode("latin-1").lower()
    verdict = None if name in VOLATILE_HEADERS or is_sensitive_header(name) else name
    if len(_NAMES) >= _NAMES_LIMIT:
        _NAMES.clear()
    _NAMES[raw] = verdict
    return verdict


def safe_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """At most ``MAX_HEADERS`` headers that may leave the gateway, values redacted, sorted by name."""
    kept: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = _header_name(raw_name)
        if name is None or name in kept:
            continue
        kept[name] = redact(raw_value[:MAX_HEADER_VALUE].decode("latin-1"))
    if len(kept) > 1:
        kept = dict(sorted(kept.items())[:MAX_HEADERS])
    return kept


def is_textual(content_type: str | None) -> bool:
    if not content_type:
        return True  # unlabelled: try it as text (undecodable bytes become U+FFFD)
    lowered = content_type.lower()
    return any(kind in lowered for kind in TEXTUAL_TYPES)


def body_preview(body: bytes, limit: int, content_type: str | None) -> str:
    """The first ``limit`` characters of the body, redacted and whitespace-collapsed."""
    if not body or limit <= 0:
        return ""
    if not is_textual(content_type):
        return f"[binary body: {redact((content_type or '').split(';', 1)[0].strip()[:100])}]"
    text = body.decode("utf-8", "replace")[: limit + REDACT_MARGIN]
    return " ".join(redact(text).split())[:limit]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more to build, per request
class RequestContext:
    method: str
    path: str  # with the query string, redacted
    headers: dict[str, str]
    body: str  # the redacted preview

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers, "body_preview": self.body}

    def as_text(self) -> str:
        """A plain rendering for embeddings (the semantic strategy)."""
        return f"{self.method} {self.path}\n{self.body}".strip()

    def fingerprint(self) -> bytes:
        """A digest of the normalised context: equal contexts get the same cached decision. The
        parts are joined with control characters that the parts cannot hold unescaped (headers and
        paths never do; the preview is whitespace-collapsed), so different contexts stay different."""
        parts = [self.method, self.path, *(f"{name}\x1e{value}" for name, value in self.headers.items())]
        canonical = "\x1f".join([*parts, "\x1d", self.body])
        return hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def build_context(
    method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes, limit: int
) -> RequestContext:
    path = raw_path.decode("latin-1")
    if query:
        path += "?" + query.decode("latin-1")
    content_type = next((v.decode("latin-1") for n, v in headers if n == b"content-type"), None)
    return RequestContext(
        method=method,
        path=redact(path[:MAX_PATH]),
        headers=safe_headers(headers),
        body=body_preview(body, limit, content_type),
    )
