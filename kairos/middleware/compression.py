"""CompressionMiddleware: response compression negotiated with ``Accept-Encoding``.

The policy is the top-level ``compression`` block (CompressionConfig); without one the gateway
passes an accessor that returns None and every request costs that one check. Standalone, pass a
CompressionConfig (the default is ``CompressionConfig()``: gzip, level 6, 1 KiB, text types).

Negotiation (``negotiate``): the ``Accept-Encoding`` q-values decide, the config's ``algorithms``
order breaks ties (browsers send every coding at q=1, so in practice the server's order wins).
``*`` stands for every coding not named; ``;q=0`` refuses one; ``x-gzip`` is ``gzip``; brotli's
token is ``br``. ``identity`` is only preferred when the client names it with a higher q than the
best coding; no header, an empty one, or one naming no coding we offer → no compression.

A response is left exactly as it is (streamed through, no buffering) when it is a HEAD response,
a 1xx/204/206/304, has ``Content-Encoding`` (already encoded upstream) or ``Content-Range``, says
``Cache-Control: no-transform``, is ``text/event-stream`` (whatever the list says), has a media
type outside ``content_types`` (parameters such as ``charset`` ignored, ``type/*`` entries
allowed), or declares a ``Content-Length`` below ``min_size``. Every other response gets
``Vary: Accept-Encoding`` merged into its ``Vary`` (unless that is ``*`` or already names it),
compressed or not, so caches downstream keep the variants apart.

Compressing: the start message is held until the first body bytes. A body that arrives whole
(one message: a small proxied response, a cache hit, a gateway error) is compressed in one go and
gets a new ``Content-Length``. A streamed body of unknown length is buffered up to ``min_size``
before deciding (a shorter one goes out untouched); then every chunk is compressed and flushed
(``Z_SYNC_FLUSH``, brotli ``flush()``, zstd ``FLUSH_BLOCK``) so a long or slow stream is never held
back and memory stays at one chunk plus the compressor's window; ``Content-Length`` is dropped and
an ``ETag`` is weakened (``W/``) as nginx does, since the bytes are no longer the upstream's.
Chunks of 256 KiB or more are compressed in a worker thread so the event loop keeps serving.

Why not Starlette's GZipMiddleware: it matches ``"gzip" in Accept-Encoding`` (no q-values, so
``gzip;q=0`` gets gzip), offers gzip only (no brotli, deflate or zstd), takes an exclude list rather
than a list of types to compress, ignores ``no-transform`` and ``ETag``, and cannot be switched off
per request by a live config. Its streaming core (compressobj + sync flush per chunk, whole-body
fast path with Content-Length) is the model followed here.

gzip and deflate come from zlib; brotli from the ``brotli`` package (or ``brotlicffi``), zstd from
``zstandard``, both dependencies of Kairos; an algorithm whose module is missing is skipped (the
config loader warns). ``level`` is used as is by every algorithm. WebSocket scopes pass untouched.
"""

from __future__ import annotations

import functools
import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.compiled import PerConfig
from kairos.config.policies import COMPRESSION_MODULES, CompressionConfig
from kairos.request import as_accessor

CompressionPolicy = CompressionConfig | Callable[[], CompressionConfig | None] | None
Header = tuple[bytes, bytes]

# The HTTP content-coding token of each configured algorithm.
CODINGS: dict[str, str] = {"gzip": "gzip", "deflate": "deflate", "brotli": "br", "zstd": "zstd"}
_ALIASES = {"x-gzip": "gzip"}
_NEVER = (204, 206, 304)
_OFFLOAD_BYTES = 256 * 1024
_CACHE_LIMIT = 512


class Encoder(Protocol):
    def chunk(self, data: bytes) -> bytes:
        """Compress ``data`` and flush, so the output decodes up to the end of ``data``."""

    def last(self, data: bytes) -> bytes:
        """Compress ``data`` and end the stream."""


class _ZlibEncoder:
    __slots__ = ("_compressor",)

    def __init__(self, level: int, wbits: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def chunk(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def last(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush()


class _BrotliEncoder:
    __slots__ = ("_compressor",)

    def __init__(self, module: Any, level: int) -> None:
        # A 512 KiB window (ngx_brotli's default) keeps a stream's memory small.
        self._compressor = module.Compressor(quality=level, lgwin=19)

    def chunk(self, data: bytes) -> bytes:
        return bytes(self._compressor.process(data)) + bytes(self._compressor.flush())

    def last(self, data: bytes) -> bytes:
        return bytes(self._compressor.process(data)) + bytes(self._compressor.finish())


class _ZstdEncoder:
    __slots__ = ("_compressor", "_flush_block")

    def __init__(self, module: Any, level: int) -> None:
        self._compressor = module.ZstdCompressor(level=level).compressobj()
        self._flush_block = module.COMPRESSOBJ_FLUSH_BLOCK

    def chunk(self, data: bytes) -> bytes:
        return bytes(self._compressor.compress(data)) + bytes(self._compressor.flush(self._flush_block))

    def last(self, data: bytes) -> bytes:
        return bytes(self._compressor.compress(data)) + bytes(self._compressor.flush())


def _import_first(names: tuple[str, ...]) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@functools.cache
def encoder_factories() -> dict[str, Callable[[int], Encoder]]:
    """The installed algorithms (their modules imported on first use, not at import time)."""
    factories: dict[str, Callable[[int], Encoder]] = {
        "gzip": lambda level: _ZlibEncoder(level, 16 + zlib.MAX_WBITS),
        "deflate": lambda level: _ZlibEncoder(level, zlib.MAX_WBITS),  # HTTP "deflate" is zlib-wrapped
    }
    brotli = _import_first(COMPRESSION_MODULES["brotli"])
    if brotli is not None:
        factories["brotli"] = lambda level: _BrotliEncoder(brotli, level)
    zstandard = _import_first(COMPRESSION_MODULES["zstd"])
    if zstandard is not None:
        factories["zstd"] = lambda level: _ZstdEncoder(zstandard, level)
    return factories


def parse_accept_encoding(value: str) -> dict[str, float]:
    """``"gzip;q=0.8, br"`` → ``{"gzip": 0.8, "br": 1.0}`` (lower-case codings; malformed q ignored)."""
    result: dict[str, float] = {}
    for item in value.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        coding = _ALIASES.get(coding, coding)
        quality: float | None = 1.0
        for param in params.split(";") if params else ():
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw.strip())
                except ValueError:
                    quality = None
                if quality is not None and not 0.0 <= quality <= 1.0:
                    quality = None
        if quality is not None:
            result[coding] = max(quality, result.get(coding, 0.0))
    return result


def negotiate(accept_encoding: str, algorithms: tuple[str, ...]) -> str | None:
    """The algorithm to use for this ``Accept-Encoding`` (None: send identity).

    Highest q wins, ``algorithms`` order breaks ties; ``*`` covers codings not named.
    """
    preferences = parse_accept_encoding(accept_encoding)
    if not preferences:
        return None
    star = preferences.get("*", 0.0)
    best, best_q = None, 0.0
    for algorithm in algorithms:
        quality = preferences.get(CODINGS[algorithm], star)
        if quality > best_q:
            best, best_q = algorithm, quality
    if best is None or preferences.get("identity", 0.0) > best_q:
        return None
    return best


@dataclass(slots=True, eq=False)
class _Compiled:
    """One config, precomputed for the hot path."""

    config: CompressionConfig
    level: int
    min_size: int
    types: frozenset[bytes]
    families: frozenset[bytes]  # "text/" for a "text/*" entry
    algorithms: tuple[str, ...]  # the installed ones, in the server's order
    factories: dict[str, Callable[[int], Encoder]]
    choices: dict[bytes, str | None] = field(default_factory=dict)

    @classmethod
    def of(cls, config: CompressionConfig) -> _Compiled:
        factories = encoder_factories()
        types = [media.encode("latin-1") for media in config.content_types]
        return cls(
            config=config,
            level=config.level,
            min_size=config.min_size,
            types=frozenset(media for media in types if not media.endswith(b"/*")),
            families=frozenset(media[:-1] for media in types if media.endswith(b"/*")),
            algorithms=tuple(name for name in config.algorithms if name in factories),
            factories=factories,
        )

    def choose(self, accept_encoding: bytes) -> str | None:
        try:
            return self.choices[accept_encoding]
        except KeyError:
            if len(self.choices) >= _CACHE_LIMIT:
                self.choices.clear()
            choice = self.choices[accept_encoding] = negotiate(
                accept_encoding.decode("latin-1"), self.algorithms
            )
            return choice

    def compressible(self, content_type: bytes) -> bool:
        media = content_type.partition(b";")[0].strip().lower()
        if media == b"text/event-stream":
            return False
        return media in self.types or (bool(self.families) and media[: media.find(b"/") + 1] in self.families)


def _has_token(value: bytes, token: bytes) -> bool:
    return any(part.strip().lower().partition(b"=")[0] == token for part in value.split(b","))


def _headers_for(headers: list[Header], coding: bytes | None, length: int | None) -> list[Header]:
    """``headers`` with Vary merged; when ``coding`` is set, also Content-Encoding, the new
    Content-Length (or none) and a weakened ETag."""
    result: list[Header] = []
    vary_at = -1
    vary_done = False
    for name, value in headers:
        lower = name.lower()
        if coding is not None:
            if lower == b"content-length":
                continue
            if lower == b"etag" and value.startswith(b'"'):
                value = b"W/" + value
        if lower == b"vary":
            if vary_at < 0:
                vary_at = len(result)
            if _has_token(value, b"*") or _has_token(value, b"accept-encoding"):
                vary_done = True
        result.append((name, value))
    if not vary_done:
        if vary_at < 0:
            result.append((b"vary", b"Accept-Encoding"))
        else:
            name, value = result[vary_at]
            result[vary_at] = (name, value + b", Accept-Encoding" if value.strip() else b"Accept-Encoding")
    if coding is not None:
        result.append((b"content-encoding", coding))
        if length is not None:
            result.append((b"content-length", str(length).encode("latin-1")))
    return result


async def _run(function: Callable[[bytes], bytes], data: bytes) -> bytes:
    if len(data) >= _OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(function, data)
    return function(data)


class _Responder:
    """The send wrapper of one compressible request (``algorithm`` None: Vary only)."""

    __slots__ = ("algorithm", "buffer", "compiled", "encoder", "send", "start", "state")

    # state: 0 before the start, 1 start held, 2 pass through, 3 compressing
    def __init__(self, send: Send, compiled: _Compiled, algorithm: str | None) -> None:
        self.send = send
        self.compiled = compiled
        self.algorithm = algorithm
        self.state = 0
        self.start: Message = {}
        self.buffer = bytearray()
        self.encoder: Encoder | None = None

    async def __call__(self, message: Message) -> None:
        state = self.state
        if state == 2:
            await self.send(message)
        elif state == 3:
            await self._compress(message)
        elif state == 0:
            await self._on_start(message)
        else:
            await self._on_first_body(message)

    async def _on_start(self, message: Message) -> None:
        if message["type"] != "http.response.start":
            await self.send(message)
            return
        self.state = 2
        status = message["status"]
        if status < 200 or status in _NEVER:
            await self.send(message)
            return
        headers: list[Header] = list(message.get("headers", ()))
        content_type = b""
        length: int | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                content_type = value
            elif lower in (b"content-encoding", b"content-range") or (
                lower == b"cache-control" and _has_token(value, b"no-transform")
            ):
                await self.send(message)
                return
            elif lower == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        compiled = self.compiled
        if not compiled.compressible(content_type) or (length is not None and length < compiled.min_size):
            await self.send(message)
            return
        if self.algorithm is None:
            message["headers"] = _headers_for(headers, None, None)
            await self.send(message)
            return
        message["headers"] = headers
        self.start = message
        self.state = 1

    async def _on_first_body(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            # pathsend, zerocopysend, ...: nothing to compress; let them through as they are.
            self.state = 2
            await self.send(self.start)
            await self.send(message)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        compiled = self.compiled
        if more:
            self.buffer += body
            if len(self.buffer) < max(compiled.min_size, 1):
                return
            data = bytes(self.buffer)
            self.buffer = bytearray()
            self.state = 3
            self._begin(None)
            await self.send(self.start)
            await self._compress({"type": "http.response.body", "body": data, "more_body": True})
            return
        data = bytes(self.buffer) + body if self.buffer else body
        self.buffer = bytearray()
        if len(data) < max(compiled.min_size, 1):
            # A short body of unknown length: out uncompressed (with Vary, as for identity clients).
            self.state = 2
            self.start["headers"] = _headers_for(self.start["headers"], None, None)
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": data, "more_body": False})
            return
        assert self.algorithm is not None
        encoder = compiled.factories[self.algorithm](compiled.level)
        encoded = await _run(encoder.last, data)
        self.state = 2
        self._begin(len(encoded))
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": encoded, "more_body": False})

    def _begin(self, length: int | None) -> None:
        algorithm = self.algorithm
        assert algorithm is not None
        coding = CODINGS[algorithm].encode("latin-1")
        self.start["headers"] = _headers_for(self.start["headers"], coding, length)
        if length is None:
            self.encoder = self.compiled.factories[algorithm](self.compiled.level)

    async def _compress(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            await self.send(message)  # trailers
            return
        encoder = self.encoder
        assert encoder is not None
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            if not body:
                return
            data = await _run(encoder.chunk, body)
            if data:
                await self.send({"type": "http.response.body", "body": data, "more_body": True})
            return
        self.state = 2
        data = await _run(encoder.last, body)
        await self.send({"type": "http.response.body", "body": data, "more_body": False})


class CompressionMiddleware:
    def __init__(self, app: ASGIApp, policy: CompressionPolicy = CompressionConfig()) -> None:  # noqa: B008
        self.app = app
        self._policy = as_accessor(policy)
        self._compiled: PerConfig[CompressionConfig, _Compiled] = PerConfig(_Compiled.of, limit=16)
        self._last: _Compiled | None = None  # the config of the previous request, usually this one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self._policy()
        if config is None or not config.enabled or scope["type"] != "http" or scope["method"] == "HEAD":
            # Off (one check), WebSocket/lifespan, or HEAD (no body: its headers are left as sent).
            await self.app(scope, receive, send)
            return
        compiled = self._last
        if compiled is None or compiled.config is not config:
            compiled = self._last = self._compiled.get(config)
        if not compiled.algorithms:
            await self.app(scope, receive, send)
            return
        accept = b""
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value if not accept else accept + b"," + value
        algorithm = compiled.choose(accept) if accept else None
        await self.app(scope, receive, _Responder(send, compiled, algorithm))
