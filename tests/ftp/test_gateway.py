"""The FTP file API end to end: the real gateway (``python -m kairos run``) in front of real FTP
servers (pyftpdlib plain and explicit FTPS, and the hostile server of tests/servers/hostile_ftp.py),
driven over HTTP with httpx.

One gateway for the module; its routes:

- ``/files/{*path}``: the plain server as ``${FTP_USER}``/``${FTP_PASSWORD}`` (the values come from
  the gateway's environment, never from the config file);
- ``/ro/{*path}``: the same server as its read-only user; ``/badpw/{*path}``: a wrong password;
- ``/secure/{*path}``: the FTPS server, trusted through ``tls_ca_file``; ``/untrusted/{*path}``:
  the same without it (the system CAs do not know the test CA);
- ``/pass/{*path}``: ``ftp_auth: passthrough`` (the client's HTTP Basic credentials);
- ``/failover/{*path}``: a dead port first, the real server second; ``/breaker/{*path}``: only
  a dead port, behind a circuit breaker that opens at the first failure;
- ``/watched``, ``/pasv``, ``/cut``, ``/refused``: the hostile server in its ``normal``,
  ``pasv-elsewhere``, ``cut-transfer`` and ``login-421`` modes, each recording what it saw.

Tests that write use names of their own under the shared ``ftp_root`` and clean up.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ftp.conftest import (
    FTP_PASSWORD,
    FTP_USER,
    HELLO,
    README,
    READONLY_PASSWORD,
    READONLY_USER,
    FtpServer,
)
from tests.processes import Server, free_port, hostile_ftp_server, kairos_run, rss_bytes
from tests.servers.hostile_ftp import FILES

MIB = 1 << 20
WRONG_PASSWORD = "not-the-ftp-password-7f3a"
BASIC = "Basic " + base64.b64encode(f"{FTP_USER}:{FTP_PASSWORD}".encode()).decode()
# What must never show in an answer, /api/config or the gateway's log.
SECRETS = (FTP_PASSWORD, READONLY_PASSWORD, WRONG_PASSWORD, BASIC.split(" ")[1])
HOSTILE_MODES = {"watched": "normal", "pasv": "pasv-elsewhere", "cut": "cut-transfer", "refused": "login-421"}
MEMORY_BOUND = 50 * 1000 * 1000  # bytes the gateway's RSS may grow by while streaming 256 MiB or 1 GiB
LONG = os.environ.get("KAIROS_SOAK") == "1"  # `make soak`: the memory tests stream 1 GiB too


@dataclass(frozen=True)
class Hostile:
    server: Server
    record: Path

    def seen(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.record.read_text())
        return data


@pytest.fixture(scope="module")
def hostile(module_tmp: Path) -> Iterator[dict[str, Hostile]]:
    """One hostile FTP server per mode, by route prefix."""
    with ExitStack() as stack:
        servers = {}
        for prefix, mode in HOSTILE_MODES.items():
            record = module_tmp / f"record-{mode}.json"
            server = stack.enter_context(hostile_ftp_server(module_tmp, mode, record))
            servers[prefix] = Hostile(server, record)
        yield servers


def ftp_route(prefix: str, backends: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "protocol": "ftp",
        "external_path": f"/{prefix}/{{*path}}",
        "internal_path": "/{*path}",
        "methods": ["GET", "HEAD", "PUT", "DELETE", "POST"],
        "backends": backends,
        **extra,
    }


def ftp_backend(port: int, scheme: str = "ftp", **extra: Any) -> dict[str, Any]:
    return {"host": f"{scheme}://127.0.0.1", "port": port, **extra}


CREDENTIALS = {"username": "${FTP_USER}", "password": "${FTP_PASSWORD}"}
BREAKER = {"failure_threshold": 1, "success_threshold": 1, "reset_timeout_ms": 600000}


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path, ftp: FtpServer, ftps: FtpServer, hostile: dict[str, Hostile]
) -> Iterator[Server]:
    assert ftps.ca_file is not None
    routes = [
        ftp_route("files", [ftp_backend(ftp.port, **CREDENTIALS)]),
        ftp_route("ro", [ftp_backend(ftp.port, username="${FTP_RO_USER}", password="${FTP_RO_PASSWORD}")]),
        ftp_route("badpw", [ftp_backend(ftp.port, username="${FTP_USER}", password="${FTP_WRONG}")]),
        ftp_route("secure", [ftp_backend(ftps.port, "ftps", tls_ca_file=str(ftps.ca_file), **CREDENTIALS)]),
        ftp_route("untrusted", [ftp_backend(ftps.port, "ftps", **CREDENTIALS)]),  # the system CAs
        ftp_route("pass", [ftp_backend(ftp.port)], ftp_auth="passthrough"),
        ftp_route(
            "failover", [ftp_backend(free_port(), **CREDENTIALS), ftp_backend(ftp.port, **CREDENTIALS)]
        ),
        ftp_route("breaker", [ftp_backend(free_port(), **CREDENTIALS)], circuit_breaker=BREAKER),
        # kairos-rs's shape: no parameter, the whole tree below internal_path.
        {
            **ftp_route("docs", [ftp_backend(ftp.port, **CREDENTIALS)]),
            "external_path": "/docs",
            "internal_path": "/docs",
        },
        *(ftp_route(prefix, [ftp_backend(server.server.port)]) for prefix, server in hostile.items()),
    ]
    env = {
        "FTP_USER": FTP_USER,
        "FTP_PASSWORD": FTP_PASSWORD,
        "FTP_RO_USER": READONLY_USER,
        "FTP_RO_PASSWORD": READONLY_PASSWORD,
        "FTP_WRONG": WRONG_PASSWORD,
        # The log at its most talkative, access log included, for the credentials check.
        "KAIROS_LOG_LEVEL": "debug",
        "KAIROS_ACCESS_LOG": "true",
    }
    with kairos_run(module_tmp, {"version": 1, "routers": routes}, env=env) as server:
        yield server


def token() -> str:
    return uuid.uuid4().hex[:8]


def error_of(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """The gateway's JSON error, checked: status, shape, request id, no secret in it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert {"error", "type", "timestamp", "request_id"} <= set(body), body
    assert body["request_id"] == response.headers["x-request-id"]
    datetime.fromisoformat(body["timestamp"])
    if kind is not None:
        assert body["type"] == kind, body
    for secret in SECRETS:
        assert secret not in response.text
    return body


def http_date(moment: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(moment), UTC), usegmt=True)


def write_big(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)


def log_since(gateway: Server, offset: int) -> str:
    """What the gateway logged after ``offset`` (``len(gateway.output())`` taken earlier)."""
    return gateway.output()[offset:]


ASGI_MISUSE = ("Expected ASGI message", "Unexpected ASGI message")  # uvicorn: a message out of order


def bytes_read(pid: int) -> int:
    """Bytes the process has read from files and sockets so far (``rchar`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def wait_until_quiet(pid: int, timeout: float = 15.0) -> None:
    """Until the process reads less than 1 MiB in 0.2 s (a transfer it still runs has ended)."""
    deadline = time.monotonic() + timeout
    previous = bytes_read(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = bytes_read(pid)
        if now - previous < MIB:
            return
        previous = now


def retries(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kairos_retries_total "):
            return float(line.split()[1])
    raise AssertionError("no kairos_retries_total in /metrics")


# -- reading -----------------------------------------------------------------------------------


def test_directory_listing_is_json_entries(client: httpx.Client, ftp: FtpServer) -> None:
    response = client.get("/files/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    listing = response.json()
    assert listing["path"] == "/"
    entries = {entry["name"]: entry for entry in listing["entries"]}
    assert {"hello.txt", "data.bin", "docs", "empty"} <= set(entries)
    assert entries["hello.txt"]["type"] == "file" and entries["hello.txt"]["size"] == len(HELLO)
    assert entries["data.bin"]["type"] == "file" and entries["data.bin"]["size"] == MIB
    assert entries["docs"]["type"] == "dir" and entries["empty"]["type"] == "dir"
    for name in ("hello.txt", "data.bin", "docs"):
        modified = entries[name]["modified"]
        assert modified.endswith("Z"), modified  # RFC 3339, UTC
        moment = datetime.fromisoformat(modified)
        assert moment.tzinfo is not None
        assert abs(moment.timestamp() - (ftp.root / name).stat().st_mtime) < 2, (name, modified)

    for path in ("/files/docs/", "/files/docs"):  # a directory with or without its trailing /
        docs = client.get(path)
        assert docs.status_code == 200, docs.text
        assert docs.json()["path"].rstrip("/") == "/docs"
        assert [(e["name"], e["type"], e["size"]) for e in docs.json()["entries"]] == [
            ("readme.md", "file", len(README))
        ]
    assert client.get("/files/empty/").json()["entries"] == []


def test_file_download_is_byte_exact_with_headers(client: httpx.Client, ftp: FtpServer) -> None:
    data = (ftp.root / "data.bin").read_bytes()
    response = client.get("/files/data.bin")
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(MIB)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["last-modified"] == http_date((ftp.root / "data.bin").stat().st_mtime)
    parsedate_to_datetime(response.headers["last-modified"])

    hello = client.get("/files/hello.txt")
    assert hello.content == HELLO
    assert hello.headers["content-type"].startswith("text/plain")
    readme = client.get("/files/docs/readme.md")
    assert readme.content == README


def test_ranges(client: httpx.Client, ftp: FtpServer) -> None:
    data = (ftp.root / "data.bin").read_bytes()
    cases = {
        "bytes=100-199": (100, 199),
        "bytes=-10": (MIB - 10, MIB - 1),
        "bytes=1048000-": (1048000, MIB - 1),
        "bytes=0-0": (0, 0),
        "bytes=1000-5000000": (1000, MIB - 1),  # the last position is capped at the end
    }
    for header, (first, last) in cases.items():
        response = client.get("/files/data.bin", headers={"Range": header})
        assert response.status_code == 206, (header, response.text)
        assert response.headers["content-range"] == f"bytes {first}-{last}/{MIB}", header
        assert response.headers["content-length"] == str(last - first + 1), header
        assert response.content == data[first : last + 1], header
    # the connections those ranges aborted were not handed to the next request in a bad state
    assert client.get("/files/data.bin").content == data


def test_a_small_range_of_a_big_file_ends_cleanly(
    client: httpx.Client, ftp: FtpServer, gateway: Server
) -> None:
    """Range 0-99 of 64 MiB: the gateway stops the transfer after 100 bytes. The answer neither
    waits for the rest of the file nor turns into an error once the 206 went out: the FTP server's
    426 for the transfer the gateway itself cut short is expected, not a failure."""
    name = f"range-{token()}.bin"
    write_big(ftp.root / name, 64 * MIB)
    offset = len(gateway.output())
    try:
        head = (ftp.root / name).read_bytes()[:100]
        for _ in range(3):
            started = time.monotonic()
            response = client.get(f"/files/{name}", headers={"Range": "bytes=0-99"})
            assert response.status_code == 206, response.text
            assert response.content == head
            assert time.monotonic() - started < 5
        assert client.get("/files/hello.txt").content == HELLO
        logged = log_since(gateway, offset)
        assert "Exception in ASGI application" not in logged, logged[-3000:]
    finally:
        (ftp.root / name).unlink()


def test_unsatisfiable_ranges_are_416(client: httpx.Client) -> None:
    for header in ("bytes=0-1,5-6", f"bytes={MIB}-", f"bytes={MIB + 10}-{MIB + 20}", "bytes=-0", "pages=1-2"):
        response = client.get("/files/data.bin", headers={"Range": header})
        error_of(response, 416, "range_not_satisfiable")


def test_if_modified_since_is_304(client: httpx.Client) -> None:
    last_modified = client.head("/files/data.bin").headers["last-modified"]
    response = client.get("/files/data.bin", headers={"If-Modified-Since": last_modified})
    assert response.status_code == 304
    assert response.content == b""
    earlier = http_date(parsedate_to_datetime(last_modified).timestamp() - 3600)
    again = client.get("/files/hello.txt", headers={"If-Modified-Since": earlier})
    assert again.status_code == 200 and again.content == HELLO


def test_head_has_headers_and_no_body(client: httpx.Client) -> None:
    response = client.head("/files/data.bin")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(MIB)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "last-modified" in response.headers
    assert client.get("/files/hello.txt").content == HELLO  # the connection is still in step


# -- writing -----------------------------------------------------------------------------------


def test_put_creates_then_replaces_and_if_none_match(client: httpx.Client, ftp: FtpServer) -> None:
    name = f"put-{token()}.txt"
    try:
        created = client.put(f"/files/{name}", content=b"first version\n")
        assert created.status_code == 201, created.text
        assert (ftp.root / name).read_bytes() == b"first version\n"
        assert client.get(f"/files/{name}").content == b"first version\n"

        replaced = client.put(f"/files/{name}", content=b"second\n")
        assert replaced.status_code == 204, replaced.text
        assert replaced.content == b""
        assert client.get(f"/files/{name}").content == b"second\n"

        refused = client.put(f"/files/{name}", content=b"third\n", headers={"If-None-Match": "*"})
        error_of(refused, 412, "precondition_failed")
        assert (ftp.root / name).read_bytes() == b"second\n"

        fresh = f"fresh-{token()}.txt"
        new = client.put(f"/files/docs/{fresh}", content=b"new\n", headers={"If-None-Match": "*"})
        assert new.status_code == 201, new.text
        (ftp.root / "docs" / fresh).unlink()
    finally:
        (ftp.root / name).unlink(missing_ok=True)


def test_no_content_answers_carry_no_content_length(client: httpx.Client, ftp: FtpServer) -> None:
    """RFC 9110 §8.6: no Content-Length in a 204; in a 304 only the size the 200 would have (the
    HTTP proxy drops it from both, kairos/proxy/http.py NO_BODY_STATUS)."""
    name = f"nolength-{token()}.txt"
    try:
        client.put(f"/files/{name}", content=b"x")
        replaced = client.put(f"/files/{name}", content=b"y")
        assert replaced.status_code == 204
        assert "content-length" not in replaced.headers, replaced.headers
        last_modified = client.head("/files/data.bin").headers["last-modified"]
        unchanged = client.get("/files/data.bin", headers={"If-Modified-Since": last_modified})
        assert unchanged.status_code == 304
        assert unchanged.headers.get("content-length") in (None, str(MIB)), unchanged.headers
    finally:
        (ftp.root / name).unlink(missing_ok=True)


def test_names_with_spaces_unicode_and_percent(client: httpx.Client, ftp: FtpServer) -> None:
    """Each path is percent-decoded exactly once: ``%252e%252e`` names a file called ``%2e%2e``."""
    folder = ftp.root / f"names-{token()}"
    folder.mkdir()
    (folder / "with space.txt").write_bytes(b"space")
    (folder / "été.txt").write_bytes(b"ete")
    (folder / "%2e%2e").write_bytes(b"literal")
    (folder / "empty.txt").write_bytes(b"")
    base = f"/files/{folder.name}"
    try:
        assert client.get(f"{base}/with%20space.txt").content == b"space"
        assert client.get(f"{base}/%C3%A9t%C3%A9.txt").content == b"ete"
        assert client.get(f"{base}/%252e%252e").content == b"literal"
        error_of(client.get(f"{base}/%252e%252e%252f%252e%252e%252fhello.txt"), 404, "not_found")
        empty = client.get(f"{base}/empty.txt")
        assert empty.status_code == 200 and empty.content == b"" and empty.headers["content-length"] == "0"
        stored = client.put(f"{base}/n%C3%BC%20%2B%20%25.txt", content=b"stored")
        assert stored.status_code == 201, stored.text
        assert (folder / "nü + %.txt").read_bytes() == b"stored"
        names = {entry["name"] for entry in client.get(f"{base}/").json()["entries"]}
        assert names == {"with space.txt", "été.txt", "%2e%2e", "empty.txt", "nü + %.txt"}
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_put_directory_and_parents(client: httpx.Client, ftp: FtpServer) -> None:
    top = f"newdir-{token()}"
    try:
        made = client.put(f"/files/{top}/")
        assert made.status_code == 201, made.text
        assert (ftp.root / top).is_dir()

        nested = client.put(f"/files/{top}/a/b/c/", params={"parents": "true"})
        assert nested.status_code == 201, nested.text
        assert (ftp.root / top / "a" / "b" / "c").is_dir()

        orphan = client.put(f"/files/{top}/x/y/")  # no ?parents=true: x does not exist
        assert 400 <= orphan.status_code < 500, orphan.text
        assert not (ftp.root / top / "x").exists()
    finally:
        for path in sorted((ftp.root / top).rglob("*"), reverse=True):
            path.rmdir()
        (ftp.root / top).rmdir()


def test_rename(client: httpx.Client, ftp: FtpServer) -> None:
    name = f"rename-{token()}.txt"
    (ftp.root / name).write_bytes(b"to be moved\n")
    try:
        moved = client.post(f"/files/{name}", params={"rename_to": "/renamed.txt"})
        assert moved.status_code == 204, moved.text
        assert not (ftp.root / name).exists()
        assert (ftp.root / "renamed.txt").read_bytes() == b"to be moved\n"
        assert client.get("/files/renamed.txt").content == b"to be moved\n"

        escape = client.post("/files/renamed.txt", params={"rename_to": "/../escaped.txt"})
        error_of(escape, 400, "bad_request")
        relative = client.post("/files/renamed.txt", params={"rename_to": "relative.txt"})
        error_of(relative, 400, "bad_request")
        assert (ftp.root / "renamed.txt").exists()
        assert not (ftp.root.parent / "escaped.txt").exists()

        nothing = client.post("/files/renamed.txt")  # POST without ?rename_to=
        error_of(nothing, 405, "method_not_allowed")
    finally:
        (ftp.root / name).unlink(missing_ok=True)
        (ftp.root / "renamed.txt").unlink(missing_ok=True)


def test_a_route_without_parameters_serves_the_tree_below_internal_path(
    client: httpx.Client, ftp: FtpServer
) -> None:
    """``{"external_path": "/docs", "internal_path": "/docs"}``: ``/docs`` is the listing of the
    server's ``docs/``, paths below it are below it, and nothing climbs out of it."""
    for root in ("/docs", "/docs/"):
        listing = client.get(root)
        assert listing.status_code == 200, listing.text
        assert listing.json()["path"] == "/docs/"
        assert [entry["name"] for entry in listing.json()["entries"]] == ["readme.md"]
    assert client.get("/docs/readme.md").content == README
    name = f"tree-{token()}.txt"
    try:
        assert client.put(f"/docs/{name}", content=b"below docs\n").status_code == 201
        assert (ftp.root / "docs" / name).read_bytes() == b"below docs\n"
        moved = client.post(f"/docs/{name}", params={"rename_to": f"/moved-{name}"})
        assert moved.status_code == 204, moved.text
        assert (ftp.root / "docs" / f"moved-{name}").exists()  # rename_to is below internal_path too
    finally:
        (ftp.root / "docs" / name).unlink(missing_ok=True)
        (ftp.root / "docs" / f"moved-{name}").unlink(missing_ok=True)
    for escape in ("/docs/%2e%2e/hello.txt", "/docs/..%2Fhello.txt", "/docs/a%5C..%5C..%5Chello.txt"):
        error_of(client.get(escape), 400, "bad_request")
    assert client.get("/docsx").status_code == 404


def test_delete_file_and_directories(client: httpx.Client, ftp: FtpServer) -> None:
    name = f"delete-{token()}"
    (ftp.root / f"{name}.txt").write_bytes(b"bye\n")
    tree = ftp.root / f"{name}-dir"
    (tree / "inner").mkdir(parents=True)
    (tree / "inner" / "f.txt").write_bytes(b"f")
    (tree / "g.txt").write_bytes(b"g")
    try:
        gone = client.delete(f"/files/{name}.txt")
        assert gone.status_code == 204, gone.text
        assert not (ftp.root / f"{name}.txt").exists()

        conflict = client.delete(f"/files/{name}-dir")
        error_of(conflict, 409, "conflict")
        assert (tree / "inner" / "f.txt").exists()

        removed = client.delete(f"/files/{name}-dir/", params={"recursive": "true"})
        assert removed.status_code == 204, removed.text
        assert not tree.exists()

        error_of(client.delete(f"/files/{name}.txt"), 404, "not_found")
    finally:
        (ftp.root / f"{name}.txt").unlink(missing_ok=True)


def test_missing_file_is_404_json(client: httpx.Client) -> None:
    body = error_of(client.get("/files/no-such-file.txt"), 404, "not_found")
    assert "no-such-file.txt" in body["error"]
    error_of(client.get("/files/no-such-dir/"), 404, "not_found")


def test_read_only_user_may_read_but_not_write(client: httpx.Client, ftp: FtpServer) -> None:
    assert client.get("/ro/hello.txt").content == HELLO
    name = f"readonly-{token()}.txt"
    error_of(client.put(f"/ro/{name}", content=b"nope"), 403, "forbidden")
    assert not (ftp.root / name).exists()
    error_of(client.delete("/ro/hello.txt"), 403, "forbidden")
    assert (ftp.root / "hello.txt").read_bytes() == HELLO


def test_wrong_password_is_401_with_www_authenticate(client: httpx.Client) -> None:
    response = client.get("/badpw/hello.txt")
    error_of(response, 401, "authentication_error")
    assert response.headers["www-authenticate"].startswith("Basic")


# -- hostile requests --------------------------------------------------------------------------

TRAVERSALS = (
    "..%2F..%2Fetc%2Fpasswd",
    "a/%2e%2e/b",
    "a/%2E%2E/%2E%2E/etc/passwd",
    "..%5C..%5Cetc%5Cpasswd",
    "a%5Cb.txt",
    "%2e%2e",
    "x%00.txt",
)


@pytest.mark.parametrize("prefix", ["files", "watched"])
def test_traversal_is_refused_before_any_ftp_command(
    client: httpx.Client, hostile: dict[str, Hostile], prefix: str
) -> None:
    watched = hostile["watched"]
    before = len(watched.seen()["commands"])
    for attempt in TRAVERSALS:
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(
                method, f"/{prefix}/{attempt}", content=b"x" if method == "PUT" else None
            )
            assert response.request.url.raw_path.decode().endswith(attempt)  # sent as written
            error_of(response, 400)
    if prefix == "watched":
        assert watched.seen()["commands"][before:] == []
        # and the route does reach the server (the record is live)
        assert client.get("/watched/hello.txt").content == FILES["hello.txt"]
        assert "RETR /hello.txt" in watched.seen()["commands"]
        commands = " ".join(watched.seen()["commands"])
        assert ".." not in commands and "passwd" not in commands and "\\" not in commands


def test_crlf_injection_is_refused(client: httpx.Client, ftp: FtpServer, hostile: dict[str, Hostile]) -> None:
    for attempt in ("x%0D%0ADELE%20hello.txt", "x%0ADELE%20hello.txt", "x%0DDELE%20hello.txt"):
        for method in ("GET", "DELETE", "PUT"):
            error_of(client.request(method, f"/files/{attempt}"), 400, "bad_request")
            error_of(client.request(method, f"/watched/{attempt}"), 400, "bad_request")
    injected = client.post("/files/hello.txt", params={"rename_to": "/x\r\nDELE hello.txt"})
    error_of(injected, 400, "bad_request")
    assert (ftp.root / "hello.txt").read_bytes() == HELLO
    assert client.get("/files/hello.txt").content == HELLO
    assert not any("DELE" in command for command in hostile["watched"].seen()["commands"])


def test_pasv_elsewhere_data_goes_to_the_control_peer(
    client: httpx.Client, hostile: dict[str, Hostile]
) -> None:
    pasv = hostile["pasv"]
    assert client.get("/pasv/hello.txt").content == FILES["hello.txt"]
    assert client.get("/pasv/big.bin").content == FILES["big.bin"]
    names = {entry["name"] for entry in client.get("/pasv/").json()["entries"]}
    assert names == set(FILES)
    seen = pasv.seen()
    assert "PASV" in seen["commands"]  # EPSV was refused: the PASV address was offered...
    addresses = [connection["address"] for connection in seen["data_connections"]]
    assert len(addresses) >= 3
    assert set(addresses) == {"127.0.0.1"}  # ... and never followed to 127.0.0.2


def test_cut_transfer_aborts_the_response(
    client: httpx.Client, hostile: dict[str, Hostile], gateway: Server
) -> None:
    """The 200 is already out when the FTP server cuts the transfer: the only honest signal left
    is a short body on a dropped connection (never a second response start, which uvicorn
    refuses with "Expected ASGI message 'http.response.body'")."""
    cut = hostile["cut"]
    logins = len(cut.seen()["control_connections"])
    offset = len(gateway.output())
    size = len(FILES["big.bin"])
    received = bytearray()
    aborted = False
    with httpx.Client(base_url=client.base_url, timeout=10) as own:
        try:
            with own.stream("GET", "/cut/big.bin") as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(size)
                for chunk in response.iter_raw():
                    received += chunk
        except httpx.RemoteProtocolError:
            aborted = True
    assert aborted or len(received) < size
    assert bytes(received) == FILES["big.bin"][: len(received)]
    assert len(received) <= size // 2

    listing = client.get("/cut/")  # the next request works, on a new FTP connection
    assert listing.status_code == 200, listing.text
    assert {entry["name"] for entry in listing.json()["entries"]} == set(FILES)
    assert len(cut.seen()["control_connections"]) == logins + 2
    logged = log_since(gateway, offset)
    assert not any(misuse in logged for misuse in ASGI_MISUSE), logged[-3000:]


def test_login_421_is_502(client: httpx.Client, hostile: dict[str, Hostile]) -> None:
    body = error_of(client.get("/refused/hello.txt"), 502, "upstream")
    assert "421" in body["error"]
    assert hostile["refused"].seen()["commands"][-1].startswith("USER ")


def test_client_leaving_mid_download_leaves_the_gateway_healthy(
    client: httpx.Client, ftp: FtpServer, gateway: Server
) -> None:
    name = f"leave-{token()}.bin"
    write_big(ftp.root / name, 64 * MIB)
    try:
        for _ in range(3):
            with (
                httpx.Client(base_url=client.base_url, timeout=10) as own,
                own.stream("GET", f"/files/{name}") as response,
            ):
                assert response.status_code == 200
                assert response.headers["content-length"] == str(64 * MIB)
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= 256 * 1024:
                        break
            assert client.get("/files/hello.txt").content == HELLO
        assert gateway.process.poll() is None
        assert client.get("/ready").status_code == 200
        assert client.get("/files/data.bin").content == (ftp.root / "data.bin").read_bytes()
    finally:
        (ftp.root / name).unlink()


def test_a_client_that_leaves_stops_the_ftp_transfer(
    client: httpx.Client, ftp: FtpServer, gateway: Server
) -> None:
    """A client that leaves after 1 MiB of 512 MiB: the gateway stops pulling the file from the FTP
    server (docs/ftp.md: "a client that left" aborts the transfer) instead of reading it all."""
    name = f"sparse-{token()}.bin"
    with (ftp.root / name).open("wb") as sparse:
        sparse.truncate(512 * MIB)
    try:
        with (
            httpx.Client(base_url=client.base_url, timeout=10) as own,
            own.stream("GET", f"/files/{name}") as response,
        ):
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= MIB:
                    break
        time.sleep(0.3)
        start = bytes_read(gateway.pid)
        time.sleep(0.5)
        pulled = bytes_read(gateway.pid) - start
        assert pulled < 8 * MIB, f"the gateway read {pulled / MIB:.0f} MiB in 0.5 s after its client left"
    finally:
        wait_until_quiet(gateway.pid)
        (ftp.root / name).unlink()
    assert client.get("/files/hello.txt").content == HELLO


def test_an_aborted_upload_does_not_replace_the_file(
    client: httpx.Client, ftp: FtpServer, gateway: Server
) -> None:
    """A client that announces 8 MiB, sends 1 MiB and leaves: the PUT did not happen, so the file
    it named keeps its content (a truncated upload must not be committed in its place)."""
    name = f"aborted-{token()}.bin"
    original = os.urandom(2 * MIB)
    (ftp.root / name).write_bytes(original)
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            head = f"PUT /files/{name} HTTP/1.1\r\nHost: kairos\r\nContent-Length: {8 * MIB}\r\n\r\n"
            sock.sendall(head.encode() + b"B" * MIB)
            time.sleep(0.3)
        assert client.get("/files/hello.txt").content == HELLO  # the gateway is fine
        time.sleep(0.5)  # time for the upload's end to reach the FTP server
        assert (ftp.root / name).read_bytes() == original, "an aborted PUT replaced the file"
    finally:
        (ftp.root / name).unlink(missing_ok=True)


# -- backends, credentials, TLS ------------------------------------------------------------------


def test_failover_to_the_second_backend(client: httpx.Client, ftp: FtpServer) -> None:
    before = retries(client)
    for _ in range(4):  # round robin: the dead first backend is picked at least once
        response = client.get("/failover/hello.txt")
        assert response.status_code == 200, response.text
        assert response.content == HELLO
    assert client.get("/failover/").status_code == 200
    name = f"failover-{token()}.txt"
    try:
        for _ in range(2):  # with a body too
            stored = client.put(f"/failover/{name}", content=b"via the second backend\n")
            assert stored.status_code in (201, 204), stored.text
        assert (ftp.root / name).read_bytes() == b"via the second backend\n"
    finally:
        (ftp.root / name).unlink(missing_ok=True)
    assert retries(client) > before  # the dead backend was tried, and failed over from


def test_circuit_breaker_opens_on_a_dead_ftp_backend(client: httpx.Client) -> None:
    """docs/ftp.md: a failing FTP backend counts as an HTTP one does, "and circuit breakers open"."""
    first = error_of(client.get("/breaker/hello.txt"), 502, "upstream")
    assert "ConnectionRefusedError" in first["error"]
    opened = client.get("/breaker/hello.txt")
    error_of(opened, 503, "circuit_open")
    assert int(opened.headers["retry-after"]) > 0


def test_passthrough_uses_the_clients_basic_credentials(client: httpx.Client) -> None:
    anonymous = client.get("/pass/hello.txt")
    error_of(anonymous, 401, "authentication_error")
    assert anonymous.headers["www-authenticate"].startswith("Basic")

    allowed = client.get("/pass/hello.txt", headers={"Authorization": BASIC})
    assert allowed.status_code == 200 and allowed.content == HELLO
    reader = client.get("/pass/hello.txt", auth=(READONLY_USER, READONLY_PASSWORD))
    assert reader.status_code == 200 and reader.content == HELLO

    wrong = client.get("/pass/hello.txt", auth=(FTP_USER, WRONG_PASSWORD))
    error_of(wrong, 401, "authentication_error")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    # a pooled connection logged in for an earlier client serves no one without credentials
    error_of(client.get("/pass/hello.txt"), 401, "authentication_error")
    error_of(client.get("/pass/hello.txt?user=kairos&password=" + FTP_PASSWORD), 401)


def test_credentials_are_not_in_api_config(client: httpx.Client) -> None:
    response = client.get("/api/config")
    assert response.status_code == 200, response.text
    for secret in SECRETS:
        assert secret not in response.text
    routes = {route["external_path"]: route for route in response.json()["routers"]}
    backend = routes["/files/{*path}"]["backends"][0]
    assert backend["password"] == "***"
    assert routes["/pass/{*path}"]["ftp_auth"] == "passthrough"


def test_ftps_download_with_tls_ca_file(client: httpx.Client, ftps: FtpServer) -> None:
    response = client.get("/secure/data.bin")
    assert response.status_code == 200, response.text
    assert response.content == (ftps.root / "data.bin").read_bytes()
    assert {entry["name"] for entry in client.get("/secure/").json()["entries"]} >= {"hello.txt", "docs"}
    ranged = client.get("/secure/data.bin", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == response.content[10:20]
    assert client.get("/secure/hello.txt").content == HELLO


def test_ftps_without_the_ca_is_refused(client: httpx.Client) -> None:
    """Verification is on, and it is per route: a connection another route logged in with its own
    ``tls_ca_file`` (idle in the pool now) is not lent to a route that would not trust the server."""
    body = error_of(client.get("/untrusted/hello.txt"), 502, "upstream")
    assert "CERTIFICATE_VERIFY_FAILED" in body["error"]
    warm = client.get("/secure/hello.txt")  # a verified connection, left idle in the pool
    assert warm.status_code == 200, f"/secure cannot log in, so the pool is not tested: {warm.text}"
    body = error_of(client.get("/untrusted/hello.txt"), 502, "upstream")
    assert "CERTIFICATE_VERIFY_FAILED" in body["error"]


def test_a_big_listing_is_complete_over_ftp_and_ftps(client: httpx.Client, ftp: FtpServer) -> None:
    """20,000 entries: a listing has no length to check it against, so a data connection that
    ends early would silently drop entries."""
    folder = ftp.root / f"many-{token()}"
    folder.mkdir()
    names = {f"entry-{index:05d}-with-a-longer-name.txt" for index in range(20000)}
    for name in names:
        (folder / name).touch()
    try:
        for prefix in ("files", "secure"):
            response = client.get(f"/{prefix}/{folder.name}/", timeout=30)
            assert response.status_code == 200, response.text
            listed = {entry["name"] for entry in response.json()["entries"]}
            assert len(listed) == len(names), f"/{prefix}: {len(listed)} of {len(names)} entries"
            assert listed == names
    finally:
        for name in names:
            (folder / name).unlink()
        folder.rmdir()


# -- memory ------------------------------------------------------------------------------------


SIZES = [
    pytest.param(256 * MIB, id="256mib"),
    pytest.param(
        1024 * MIB,
        id="1gib",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not LONG, reason="KAIROS_SOAK=1 runs the 1 GiB transfers"),
        ],
    ),
]
"""How much each memory test streams: 256 MiB in ``make test``, also 1 GiB in ``make soak``."""


def report(what: str, size: int, before: int, peak: int, started: float) -> str:
    """One line for ``pytest -rP`` (``make soak`` shows what the soak measured) and for a failure."""
    seconds = time.monotonic() - started
    return (
        f"{what} {size // MIB} MiB: RSS {before / MIB:.1f} -> peak {peak / MIB:.1f} MiB "
        f"(grew {(peak - before) / MIB:.1f} MiB), {seconds:.1f} s, {size / MIB / seconds:.0f} MiB/s"
    )


@pytest.mark.parametrize("size", SIZES)
def test_mib_scale_download_streams_in_bounded_memory(
    client: httpx.Client, ftp: FtpServer, gateway: Server, size: int
) -> None:
    name = f"mem-down-{token()}.bin"
    write_big(ftp.root / name, size)
    try:
        before = rss_bytes(gateway.pid)[0]
        peak = before
        received = 0
        started = time.monotonic()
        with client.stream("GET", f"/files/{name}", timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(size)
            for chunk in response.iter_bytes(MIB):
                received += len(chunk)
                if received % (8 * MIB) < len(chunk):
                    peak = max(peak, rss_bytes(gateway.pid)[0])
        peak = max(peak, rss_bytes(gateway.pid)[0])
        summary = report("download", size, before, peak, started)
        print(summary)
        assert received == size
        assert peak - before < MEMORY_BOUND, summary
    finally:
        (ftp.root / name).unlink()


@pytest.mark.parametrize("size", SIZES)
def test_mib_scale_upload_streams_in_bounded_memory(
    client: httpx.Client, ftp: FtpServer, gateway: Server, size: int
) -> None:
    name = f"mem-up-{token()}.bin"
    block = os.urandom(MIB)
    before = rss_bytes(gateway.pid)[0]
    peak = before

    def body() -> Iterator[bytes]:
        nonlocal peak
        for index in range(size // MIB):
            if index % 8 == 0:
                peak = max(peak, rss_bytes(gateway.pid)[0])
            yield block

    try:
        started = time.monotonic()
        response = client.put(f"/files/{name}", content=body(), timeout=60)
        peak = max(peak, rss_bytes(gateway.pid)[0])
        summary = report("upload", size, before, peak, started)
        print(summary)
        assert response.status_code == 201, response.text
        stored = ftp.root / name
        assert stored.stat().st_size == size
        with stored.open("rb") as written:
            assert written.read(MIB) == block
            written.seek(-MIB, os.SEEK_END)
            assert written.read() == block
        assert peak - before < MEMORY_BOUND, summary
    finally:
        (ftp.root / name).unlink(missing_ok=True)


# -- last: what the gateway wrote ----------------------------------------------------------------


def test_the_log_holds_no_credentials(client: httpx.Client, gateway: Server) -> None:
    """After every test above (wrong passwords, passthrough, errors, aborted transfers), at debug
    level: no password and no Basic credentials in the gateway's output."""
    assert client.get("/ready").status_code == 200
    log = gateway.output()
    assert "Kairos" in log and "started" in log  # the log is the gateway's, and it is written
    assert "/pass/hello.txt" in log  # the access log is on, and saw the passthrough requests
    for secret in SECRETS:
        assert secret not in log


def test_the_route_root_is_never_deleted(client: httpx.Client, ftp: FtpServer) -> None:
    for path in ("/files/", "/files/?recursive=true"):
        error_of(client.delete(path), 403, "forbidden")
    assert (ftp.root / "hello.txt").exists()
