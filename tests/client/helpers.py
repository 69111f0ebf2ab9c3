"""What the client tests need besides a real gateway: an adapter that drives ``AsyncKairosClient``
from the same test code as ``KairosClient``, and two tiny local servers (one scripted HTTP server
that counts requests, one that accepts connections and never answers)."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast

from kairos.client.client import AsyncCache, AsyncConfig, AsyncRoutes

# -- the async client, driven like the sync one ------------------------------------------------


class Blocking:
    """An ``AsyncKairosClient`` (or one of its ``routes``/``config``/``cache`` parts) whose methods
    are awaited on one event loop: ``Blocking(async_client, runner).routes.list()`` runs
    ``await async_client.routes.list()``. ``admin_prefix`` (a coroutine there, a property on the
    sync client) reads as a string, and ``stream_metrics`` becomes a plain iterator pulling each
    event from the async generator. So one test body checks both clients."""

    def __init__(self, target: object, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "admin_prefix":
            return self._runner.run(value())
        if isinstance(value, AsyncRoutes | AsyncConfig | AsyncCache):
            return Blocking(value, self._runner)
        if inspect.isasyncgenfunction(value):
            return lambda *args, **kwargs: self._iterate(value(*args, **kwargs))
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kwargs: self._runner.run(value(*args, **kwargs))
        return value

    def _iterate(self, events: AsyncIterator[Any]) -> Iterator[Any]:
        async def step() -> Any:
            return await anext(events)

        try:
            while True:
                try:
                    yield self._runner.run(step())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                self._runner.run(aclose())


# -- a scripted HTTP server --------------------------------------------------------------------

RESET = "reset"  # a reply that drops the connection (RST) without answering
Reply = tuple[int, Any] | str


class Script:
    """Per (method, path): the replies to give in turn (the last one repeats), and every request
    seen. Unscripted requests get a 404 in the gateway's error shape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[tuple[str, str]] = []

    def plan(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._plans[(method, path)] = list(replies)

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.seen.count((method, path))

    def next(self, method: str, path: str) -> Reply:
        with self._lock:
            self.seen.append((method, path))
            plan = self._plans.get((method, path))
            if not plan:
                return 404, {"error": f"nothing at {path}", "type": "route_not_found"}
            return plan.pop(0) if len(plan) > 1 else plan[0]


class _ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    script: Script


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        reply = cast(_ScriptedServer, self.server).script.next(self.command, path)
        if reply == RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        status, body = cast(tuple[int, Any], reply)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ScriptedServer:
    """A stdlib HTTP server on 127.0.0.1 in a thread, answering from a ``Script``."""

    def __init__(self) -> None:
        self.script = Script()
        self._server = _ScriptedServer(("127.0.0.1", 0), _Handler)
        self._server.script = self.script
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- a server that never answers ---------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (until closed)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(connection)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()
        self._socket.close()
