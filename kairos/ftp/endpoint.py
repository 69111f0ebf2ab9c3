"""The endpoint of ``"protocol": "ftp"`` routes: HTTP in, FTP out, bodies streamed both ways.

- ``GET``/``HEAD`` a directory: ``{"path", "entries": [{"name", "type", "size", "modified",
  "permissions"}]}`` (MLSD, else LIST, as aioftp reads them); a file: its bytes streamed, with
  ``Content-Type`` from the extension, ``Content-Length``, ``Last-Modified``, ``Accept-Ranges``;
  one ``Range`` → 206 (``REST`` to its start, the transfer aborted after its end); several ranges
  or an unsatisfiable one → 416; ``If-Modified-Since`` → 304.
- ``PUT`` a file: the body streamed to ``STOR``, 201 created / 204 replaced; ``If-None-Match: *``
  → 412 when it exists. ``PUT`` on a path ending in ``/``: ``MKD`` (``?parents=true``; without it
  a missing parent is a 404, whatever the server's ``MKD`` would do), 201.
- ``DELETE`` a file → 204; a directory only with ``?recursive=true``.
- ``POST ...?rename_to=/new/path`` → ``RNFR``/``RNTO``; the new path is in the route's namespace
  (it replaces the route's path parameter), 204.

FTP replies become the gateway's JSON errors: 550 → 404 (403 when the reply speaks of
permission, 409 when it says the name exists), 530 → 401, 552 → 413, 553 → 400, 421/425/426 and
the rest → 502, timeouts → 504. A connection that fails sets ``Exchange.upstream_failure`` as the
HTTP proxy does, so retries and circuit breakers fail over to another FTP backend.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import mimetypes
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs

import aioftp
from starlette.types import Message, Receive, Scope, Send

from kairos.errors import send_error
from kairos.exchange import Exchange, get_exchange
from kairos.ftp.paths import BadFtpPath, check_name, ftp_path
from kairos.ftp.pool import FtpPool, FtpTarget, Lease
from kairos.proxy.http import ResponseAborted  # cut a started response: the client sees it cut
from kairos.routing.route import Route

logger = logging.getLogger("kairos.ftp")

CHUNK = 256 * 1024
"""Bytes per download (and listing) read, and per ASGI body message. Every block pays the whole send
chain (aioftp's read, the middlewares, uvicorn): at 64 KiB a 100 MB download took 1.4x the gateway
CPU it takes at 256 KiB (162 against 113 ms, docs/performance.md "FTP transfers"); 512 KiB or 1 MiB
gain nothing more. asyncio's StreamReader keeps reading past its 64 KiB limit before it pauses, so
a read does return about a whole block."""
MAX_LISTING = 100_000  # entries of one directory listing; a server sending more gets a 502
MAX_LINE = 64 * 1024  # bytes of one listing line (asyncio's readline limit); longer: a 502
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FtpFailure(Exception):
    """An answer to send instead of the operation's result: the gateway's error JSON."""

    def __init__(
        self, kind: str, message: str, status: int | None = None, failure: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.failure = failure  # Exchange.upstream_failure: connect / timeout / error


def map_reply(exc: aioftp.StatusCodeError, what: str) -> FtpFailure:
    """An FTP reply the operation did not expect, as the HTTP answer it means."""
    code = str(exc.received_codes[-1]) if exc.received_codes else ""
    text = " ".join(str(line) for line in exc.info).strip()
    said = f"FTP {code} {text}".strip()
    if code == "550":
        if any(word in text.lower() for word in ("permission", "denied", "not allowed", "privilege")):
            return FtpFailure("forbidden", f"{what}: permission denied ({said})", 403)
        if says_exists(exc):
            return FtpFailure("conflict", f"{what}: the name is taken ({said})", 409)
        return FtpFailure("not_found", f"{what}: not found ({said})", 404)
    if code == "530":
        return FtpFailure("authentication_error", f"{what}: the FTP server refused the login ({said})", 401)
    if code == "552":
        return FtpFailure("payload_too_large", f"{what}: the FTP server's storage limit ({said})", 413)
    if code == "553":
        return FtpFailure("bad_request", f"{what}: file name not allowed ({said})", 400)
    return FtpFailure("upstream", f"{what}: {said}", 502, failure="error")


_NEGATION = re.compile(r"\b(not|no such|doesn't|does not)\b")


def says_exists(exc: aioftp.StatusCodeError) -> bool:
    """A 550 that refuses a name because something already has it (aioftp's server: ``550 path
    already exists`` for ``RNTO`` and ``MKD``; EEXIST's ``File exists``), not because it is missing
    (aioftp's own not-found text is ``path does not exists``)."""
    if not exc.received_codes or str(exc.received_codes[-1]) != "550":
        return False
    text = " ".join(str(line) for line in exc.info).lower()
    return "exist" in text and _NEGATION.search(text) is None


class FtpEndpoint:
    """ASGI app for ftp routes; one connection pool for the gateway."""

    def __init__(self, pool: FtpPool | None = None) -> None:
        self.pool = pool or FtpPool()
        self._contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        route = exchange.route
        assert route is not None and exchange.backend is not None
        answer = _Answer(send)
        send = answer.send
        try:
            target = self._target(route, exchange, scope)
            path = ftp_path(route.upstream_path.build(exchange.params))
            await self._operate(scope, receive, send, exchange, target, path)
        except BadFtpPath as exc:
            await send_error(
                send, "bad_request", f"Bad FTP path for {route.name}: {exc}", exchange.request_id
            )
        except FtpFailure as failure:
            if failure.failure is not None:
                exchange.upstream_failure = failure.failure
            if answer.started:  # the head is out: all that is left is to cut the response short
                raise ResponseAborted(f"{route.name}: {failure.message}") from None
            headers = [(b"www-authenticate", b'Basic realm="kairos ftp"')] if failure.status == 401 else []
            await send_error(
                send, failure.kind, failure.message, exchange.request_id, headers, failure.status
            )

    def _target(self, route: Route, exchange: Exchange, scope: Scope) -> FtpTarget:
        backend = exchange.backend
        assert backend is not None
        configs = route.config.backends or ()
        config = configs[backend.index] if backend.index < len(configs) else None
        user = (config.username if config is not None else None) or "anonymous"
        secret = config.password if config is not None else None
        password = secret.get_secret_value() if secret is not None else ""
        if route.config.ftp_auth == "passthrough":
            user, password = _basic(scope)
        tls = backend.scheme == "ftps"
        settings = (config.tls_ca_file, config.tls_verify) if config is not None else (None, True)
        context = self._tls_context(*settings) if tls else None
        return FtpTarget(backend.host, backend.port, tls, user, password, context, settings)

    def _tls_context(self, ca_file: str | None, verify: bool) -> ssl.SSLContext:
        """The context of an ``ftps`` backend: its ``tls_ca_file`` or the system CAs, host name
        checked unless ``tls_verify`` is false; no ALPN (FTP has none). One per setting."""
        key = (ca_file, verify)
        context = self._contexts.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[key] = context
        return context

    async def _operate(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange, target: FtpTarget, path: str
    ) -> None:
        method = scope["method"]
        query = {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        what = f"{method} {path}"
        try:
            async with self.pool.session(target) as lease:
                if method in ("GET", "HEAD"):
                    await self._read(lease, path, headers, method == "HEAD", send, receive, exchange)
                elif method == "PUT":
                    await self._write(lease, path, headers, query, send, receive, exchange)
                elif method == "DELETE":
                    await self._delete(lease, path, query, send, exchange)
                elif method == "POST" and "rename_to" in query:
                    await self._rename(lease, path, query["rename_to"], exchange, send)
                else:
                    raise FtpFailure(
                        "method_not_allowed",
                        f"{method} is not an FTP operation here (POST needs ?rename_to=)",
                        405,
                    )
        except aioftp.StatusCodeError as exc:
            raise map_reply(exc, what) from None
        except _ClientGone:
            return  # nobody to answer: the transfer was aborted and its connection closed
        except TimeoutError:
            raise FtpFailure(
                "timeout", f"{what}: the FTP server did not answer in time", 504, "timeout"
            ) from None
        except (OSError, aioftp.AIOFTPException) as exc:
            failure = "connect" if isinstance(exc, ConnectionRefusedError) else "error"
            raise FtpFailure("upstream", f"{what}: {type(exc).__name__}: {exc}", 502, failure) from None

    # -- reading -------------------------------------------------------------------------------

    async def _read(
        self,
        lease: Lease,
        path: str,
        headers: Mapping[str, str],
        head_only: bool,
        send: Send,
        receive: Receive,
        exchange: Exchange,
    ) -> None:
        client = lease.client
        info: Mapping[str, Any] = (
            {"type": "dir"} if path.endswith("/") or path == "/" else await client.stat(path)
        )
        if info.get("type") == "dir":
            body = json.dumps({"path": path, "entries": await _listing(client, path)}).encode()
            await _respond(send, 200, [(b"content-type", b"application/json")], body, exchange, head_only)
            return
        size = int(info.get("size", 0))
        modified = _modified(info)
        answer_headers = [
            (b"content-type", (mimetypes.guess_type(path)[0] or "application/octet-stream").encode()),
            (b"accept-ranges", b"bytes"),
        ]
        if modified is not None:
            answer_headers.append((b"last-modified", format_datetime(modified, usegmt=True).encode()))
            since = _http_date(headers.get("if-modified-since"))
            if since is not None and modified.replace(microsecond=0) <= since:
                await _respond(send, 304, answer_headers, b"", exchange, True)
                return
        start, end = 0, size - 1
        status = 200
        wanted = headers.get("range")
        if wanted is not None:
            parsed = _range(wanted, size)
            if parsed is None:
                raise FtpFailure(
                    "range_not_satisfiable", f"Range {wanted!r} cannot be served for a {size}-byte file", 416
                )
            start, end = parsed
            status = 206
            answer_headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        length = max(0, end - start + 1)
        answer_headers.append((b"content-length", str(length).encode()))
        if head_only or length == 0:
            await _respond(send, status, answer_headers, b"", exchange, True)
            return
        await send(
            {"type": "http.response.start", "status": status, "headers": _with_id(answer_headers, exchange)}
        )
        remaining = length
        stream = await client.download_stream(path, offset=start)
        try:
            async with _watching(receive) as gone:
                async for block in stream.iter_by_block(CHUNK):
                    if gone.is_set():
                        raise _ClientGone()
                    piece = block[:remaining]
                    remaining -= len(piece)
                    await send({"type": "http.response.body", "body": piece, "more_body": remaining > 0})
                    if remaining <= 0:
                        break
        except BaseException:
            _abandon(stream, lease)
            raise
        if remaining > 0:
            _abandon(stream, lease)
            raise _Cut(f"the FTP server sent {length - remaining} of {length} bytes")
        if end < size - 1:
            _abandon(stream, lease)  # stopped before the end (a range): the control connection is in doubt
            return
        try:
            await stream.finish()
        except aioftp.StatusCodeError:
            lease.broken = True  # the bytes are all out; only the connection is not reused

    # -- writing -------------------------------------------------------------------------------

    async def _write(
        self,
        lease: Lease,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        send: Send,
        receive: Receive,
        exchange: Exchange,
    ) -> None:
        client = lease.client
        if path.endswith("/"):
            await _make_directory(client, path.rstrip("/"), query.get("parents") == "true")
            await _respond(send, 201, [], b"", exchange, False)
            return
        existed = await client.exists(path)
        if existed and headers.get("if-none-match", "").strip() == "*":
            raise FtpFailure("precondition_failed", f"{path} exists (If-None-Match: *)", 412)
        # FTP cannot tell an aborted upload from a finished one (closing the data connection ends
        # the file), so the body goes to a temporary name and replaces the file only when whole.
        folder, _, leaf = path.rpartition("/")
        temporary = f"{folder}/.{leaf}.kairos-{secrets.token_hex(4)}.part"
        stream = await client.upload_stream(temporary)
        try:
            async for chunk in _request_body(receive):
                await stream.write(chunk)
        except BaseException:
            _abandon(stream, lease)
            await _discard(client, temporary)
            raise
        await stream.finish()
        try:
            await _put_in_place(client, temporary, path, existed)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the upload did not happen
                await asyncio.wait_for(client.remove_file(temporary), 5)
            raise
        await _respond(send, 204 if existed else 201, [], b"", exchange, False)

    async def _delete(
        self, lease: Lease, path: str, query: Mapping[str, str], send: Send, exchange: Exchange
    ) -> None:
        client = lease.client
        route = exchange.route
        assert route is not None
        base = ftp_path(route.upstream_path.build(dict.fromkeys(route.template.param_names, ""))).rstrip("/")
        if path.rstrip("/") == base:
            raise FtpFailure("forbidden", f"{path or '/'} is the route's root: it is never deleted", 403)
        info = await client.stat(path.rstrip("/") or "/")
        if info.get("type") == "dir":
            if query.get("recursive") != "true":
                raise FtpFailure("conflict", f"{path} is a directory: add ?recursive=true to delete it", 409)
            await client.remove(path.rstrip("/"))
        else:
            await client.remove_file(path)
        await _respond(send, 204, [], b"", exchange, False)

    async def _rename(self, lease: Lease, path: str, rename_to: str, exchange: Exchange, send: Send) -> None:
        route = exchange.route
        assert route is not None
        names = route.template.param_names
        new = check_name(rename_to, "rename_to")
        if names:  # the new path replaces the route's (last) path parameter
            params = {**exchange.params, names[-1]: new.lstrip("/")}
            new = ftp_path(route.upstream_path.build(params))
        await lease.client.rename(path, new)
        await _respond(send, 204, [(b"location", rename_to.encode("utf-8", "replace"))], b"", exchange, False)


class _ClientGone(Exception):
    """The client disconnected mid-transfer."""


class _Answer:
    """Wraps ``send`` to know whether the response head went out."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


@contextlib.asynccontextmanager
async def _watching(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """An event set when the client disconnects (uvicorn's send does nothing after that, so a
    download loop would otherwise read the whole file for nobody)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        yield gone
    finally:
        watcher.cancel()


def _abandon(stream: Any, lease: Lease) -> None:
    """Close a data connection without waiting for the server's final reply (it would be 426 for
    a transfer cut short); the control connection is closed with it, never reused."""
    with contextlib.suppress(Exception):
        stream.close()
    lease.broken = True


async def _make_directory(client: aioftp.Client, path: str, parents: bool) -> None:
    """``MKD``, and without ``?parents=true`` only below a directory that exists. Some servers
    create missing parents by themselves (aioftp's server: its ``MKD`` is ``mkdir -p``), so the
    parent is checked here: whether ``PUT /a/b/`` creates ``a`` is the gateway's rule, not the
    server's."""
    parent = path.rpartition("/")[0]
    if not parents and parent and not await client.exists(parent):
        raise FtpFailure(
            "not_found", f"{parent}/ does not exist: add ?parents=true to create it with {path}/", 404
        )
    await client.make_directory(path, parents=parents)


async def _put_in_place(client: aioftp.Client, temporary: str, path: str, existed: bool) -> None:
    """``RNFR``/``RNTO`` a finished upload onto its name. Most servers replace the file in the
    ``RNTO`` (a POSIX rename: nobody ever sees it missing or partial). Some refuse a name that is
    taken (aioftp's server: ``550 path already exists``); for those the old file is moved aside
    first, put back if the upload cannot take its place, and deleted once it has."""
    try:
        await client.rename(temporary, path)
        return
    except aioftp.StatusCodeError as exc:
        if not existed or not says_exists(exc):
            raise
    folder, _, leaf = path.rpartition("/")
    aside = f"{folder}/.{leaf}.kairos-{secrets.token_hex(4)}.old"
    await client.rename(path, aside)
    try:
        await client.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.rename(aside, path), 5)
        raise
    with contextlib.suppress(aioftp.StatusCodeError):  # replaced; a stray .old is all that is left
        await client.remove_file(aside)


async def _discard(client: aioftp.Client, temporary: str) -> None:
    """Best effort after an aborted upload: read the transfer's final reply, delete the partial
    temporary file (a crash here leaves a ``.part`` file, never a truncated real one)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.command(None, ("2xx", "4xx", "5xx")), 5)
        await asyncio.wait_for(client.remove_file(temporary), 5)


class _Cut(FtpFailure):
    def __init__(self, message: str) -> None:
        super().__init__("upstream", message, 502, "error")


_Parse = Callable[[bytes], tuple[PurePosixPath, Mapping[str, Any]]]  # one listing line: (name, facts)


async def _listing(client: aioftp.Client, path: str) -> list[dict[str, Any]]:
    """``MLSD`` (``LIST`` when the server has no ``MLSD``: a 50x), as aioftp's ``Client.list`` does,
    but read in blocks and split into lines here: ``Client.list`` reads line by line, each read in
    its own ``asyncio.wait_for`` (a task per entry), which cost the gateway more CPU than parsing
    the entries. A line longer than ``MAX_LINE`` or that does not parse is the server's fault: 502."""
    target = path.rstrip("/") or "/"
    try:
        stream = await client.get_stream(f"MLSD {target}", "1xx")
        parse: _Parse = client.parse_mlsx_line
    except aioftp.StatusCodeError as exc:
        if not exc.received_codes[-1].matches("50x"):
            raise
        stream = await client.get_stream(f"LIST {target}", "1xx")
        parse = client.parse_list_line
    entries: list[dict[str, Any]] = []
    pending = b""
    seen = 0  # lines, skipped ones too: a server sending empty lines forever is bounded as well
    async for block in stream.iter_by_block(CHUNK):
        *lines, pending = (pending + block).split(b"\n")
        seen += len(lines)
        if seen > MAX_LISTING + 2:  # "." and ".." come on top of the entries
            raise FtpFailure("upstream", f"{path}: more than {MAX_LISTING} entries", 502, "error")
        if len(pending) > MAX_LINE:
            raise FtpFailure("upstream", f"{path}: a listing line longer than {MAX_LINE} bytes", 502, "error")
        _entries(parse, lines, entries, path)
    _entries(parse, [pending], entries, path)
    await stream.finish()
    return sorted(entries, key=lambda entry: (entry["type"] != "dir", entry["name"]))


def _entries(parse: _Parse, lines: list[bytes], entries: list[dict[str, Any]], path: str) -> None:
    """Listing lines as the JSON entries of the answer, appended to ``entries``."""
    for line in lines:
        if not line.strip():
            continue
        try:
            name, info = parse(line)
        except (ValueError, KeyError, IndexError):
            raise FtpFailure("upstream", f"{path}: a listing line does not parse", 502, "error") from None
        if name.name in ("", ".", ".."):
            continue
        if len(entries) >= MAX_LISTING:
            raise FtpFailure("upstream", f"{path}: more than {MAX_LISTING} entries", 502, "error")
        kind = str(info.get("type", "file"))
        modified = _modified(info)
        entries.append(
            {
                "name": name.name,
                "type": "dir" if kind in ("dir", "cdir", "pdir") else ("link" if "link" in kind else "file"),
                "size": int(info["size"]) if str(info.get("size", "")).isdigit() else None,
                "modified": modified.isoformat().replace("+00:00", "Z") if modified else None,
                "permissions": info.get("unix.mode") or info.get("perm"),
            }
        )


def _modified(info: Mapping[str, Any]) -> datetime | None:
    """The ``modify`` fact (``YYYYMMDDHHMMSS[.sss]``, UTC). Fourteen digits are sliced, not given to
    ``strptime``: at ~15 µs a call, ``strptime`` was a sixth of the gateway's CPU for a listing."""
    text = str(info.get("modify", ""))
    try:
        if len(text) >= 14 and text[:14].isascii() and text[:14].isdigit():
            month, day, hour, minute, second = (int(text[at : at + 2]) for at in range(4, 14, 2))
            return datetime(int(text[:4]), month, day, hour, minute, second, tzinfo=UTC)
        return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (first, last) inclusive, or None when it cannot be served (several
    ranges, malformed, or past the end)."""
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return None
    return start, end


def _basic(scope: Scope) -> tuple[str, str]:
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                user, _, password = base64.b64decode(value[6:].strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                break
            if user:
                return user, password
    raise FtpFailure("authentication_error", "this FTP route needs HTTP Basic credentials", 401)


def _with_id(headers: list[tuple[bytes, bytes]], exchange: Exchange) -> list[tuple[bytes, bytes]]:
    return [*headers, (b"x-request-id", exchange.request_id.encode())]


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    exchange: Exchange,
    head_only: bool,
) -> None:
    if status in (204, 304):  # RFC 9110 §8.6: no Content-Length on these
        headers = [header for header in headers if header[0] != b"content-length"]
    elif not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": _with_id(headers, exchange)})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _Cut("the client went away mid-upload")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
