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

Redaction costs more than a cached decision saves: ``ContextMemo`` remembers, for a request seen
before (same method, path, query, non-volatile headers and body prefix), the context built from it,
so a repeated request costs a dict lookup instead of redaction and fingerprinting.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
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
_UNSEEN = object()  # not yet in _NAMES
_blake2s = hashlib.blake2s


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
    digest: bytes | None = field(default=None, compare=False, repr=False)  # fingerprint(), once computed

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers, "body_preview": self.body}

    def as_text(self) -> str:
        """A plain rendering for embeddings (the semantic strategy)."""
        return f"{self.method} {self.path}\n{self.body}".strip()

    def fingerprint(self) -> bytes:
        """A digest of the normalised context: equal contexts get the same cached decision. The
        parts are joined with control characters that the parts cannot hold unescaped (headers and
        paths never do; the preview is whitespace-collapsed), so different contexts stay different.
        Computed once: a memoised context (``ContextMemo``) serves many requests, and the same
        ``bytes`` object each time also keeps its hash, so the cache lookup does not rehash it."""
        digest = self.digest
        if digest is None:
            parts = [self.method, self.path, *(f"{name}\x1e{value}" for name, value in self.headers.items())]
            canonical = "\x1f".join([*parts, "\x1d", self.body])
            digest = self.digest = hashlib.blake2b(
                canonical.encode("utf-8", "surrogatepass"), digest_size=16
            ).digest()
        return digest


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


MemoKey = tuple[int | str | bytes, ...]


def body_bytes_used(limit: int) -> int:
    """How many leading bytes of the body ``body_preview`` can depend on: it decodes (UTF-8, at most
    4 bytes a character, each replaced invalid byte at least 1) and keeps ``limit + REDACT_MARGIN``
    characters, so the ones after that many times 4 never change the preview."""
    return 4 * (max(limit, 0) + REDACT_MARGIN)


def raw_key(
    method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes, limit: int
) -> MemoKey:
    """Everything ``build_context`` reads, taken before any redaction, as a dict key: equal keys mean
    equal contexts (a tuple compares part by part, so parts cannot run into each other).

    - the headers that ``safe_headers`` drops (volatile, sensitive) are left out, so a per-request
      ``x-request-id`` does not make every key unique and a client's credentials are never kept;
      the others go in as sent (name, value), in order, each value cut where the context cuts it
      (``content-type`` whole: ``is_textual`` reads all of it);
    - the path and query are cut at ``MAX_PATH`` bytes (the context keeps that many characters of
      ``path?query``, one per byte);
    - the body is kept as a digest (blake2s) of the bytes the preview can depend on: a key holds no
      body, so no body secret outlives its request here, and a key stays small."""
    names = _NAMES
    if body:
        used = body_bytes_used(limit)
        body = _blake2s(body if len(body) <= used else body[:used]).digest()
    key: list[int | str | bytes] = [limit, method, raw_path[:MAX_PATH], query[:MAX_PATH], body]
    for name, value in headers:
        verdict = names.get(name, _UNSEEN)
        if verdict is _UNSEEN:
            verdict = _header_name(name)
        if verdict is not None:
            key.append(name)
            key.append(
                value
                if len(value) <= MAX_HEADER_VALUE or name == b"content-type"
                else value[:MAX_HEADER_VALUE]
            )
    return tuple(key)


DEFAULT_MEMO_ENTRIES = 1024
MEMO_MAX_ENTRY_BYTES = 8192  # key parts + preview: a larger request is not remembered (built each time)


class ContextMemo:
    """Raw request inputs (``raw_key``) -> the ``RequestContext`` built from them, its fingerprint
    computed: a client repeating a request (the case the decision cache is for) skips redaction,
    normalisation and fingerprinting, which cost more than the cached decision saves otherwise.

    It remembers a pure function of the request, never a decision: every request still asks the
    decision cache, so its TTL, the per-plan keys (a reload that changes a route's plan keys new
    decisions), single-flight and the metrics outcomes are exactly as without it, and nothing here
    needs to expire. Bounded: least recently used entries go first, and a request whose key and
    preview together exceed ``MEMO_MAX_ENTRY_BYTES`` is not remembered, so an entry stays under
    ~12 KB (the context adds at most a 1000-character path and 10 x 200-character headers) and the
    whole memo under ~15 MB whatever the clients send; usually an entry is well under 1 KB.

    An entry keeps the raw path, query and the header values that are not credentials (a secret in
    a query string is redacted in the context but kept in the key, in memory, never sent), never
    a raw body nor an ``Authorization``/``Cookie``/``*-key`` header."""

    __slots__ = ("_entries", "hits", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MEMO_ENTRIES) -> None:
        self._entries: OrderedDict[MemoKey, RequestContext] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0

    def context(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        limit: int,
    ) -> RequestContext:
        """The context of this request: remembered, or built (and remembered)."""
        key = raw_key(method, raw_path, query, headers, body, limit)
        entries = self._entries
        context = entries.get(key)
        if context is not None:
            entries.move_to_end(key)
            self.hits += 1
            return context
        context = build_context(method, raw_path, query, headers, body, limit)
        context.fingerprint()
        size = len(context.body) + sum(len(part) for part in key if not isinstance(part, int))
        if size <= MEMO_MAX_ENTRY_BYTES:
            entries[key] = context
            if len(entries) > self.max_entries:
                entries.popitem(last=False)
        return context

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
