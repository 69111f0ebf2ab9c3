"""The FTP file API against a second FTP server implementation: aioftp's own ``aioftp.Server``
(tests/servers/aioftp_server.py) as a real process, behind the real gateway (``python -m kairos
run``), driven over HTTP with httpx. tests/ftp/test_gateway.py runs the same operations against
pyftpdlib; this module checks that the HTTP API means the same thing on a server that answers
differently:

- ``RNTO`` onto a name that exists is refused (``550 path already exists``): a ``PUT`` that replaces
  a file must still replace it (204), and a rename onto a taken name is a 409, not a 404;
- ``MKD`` creates missing parents by itself: without ``?parents=true`` the gateway still refuses;
- no ``NOOP``: the idle-connection probe must not take ``502 not implemented`` for a dead connection;
- ``MLSD`` ends with ``200``; facts are only ``Size``, ``Modify``, ``Type`` (no permissions).

Routes: ``/a/{*path}`` (full user), ``/a-ro/{*path}`` (read-only user), ``/a-badpw/{*path}`` (a wrong
password), ``/a-failover/{*path}`` (a dead port first, the aioftp server second). Tests that write
use names of their own under ``ftp_root`` and clean up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from kairos.ftp.pool import FtpPool, FtpTarget
from tests.ftp.conftest import (
    FTP_PASSWORD,
    FTP_USER,
    HELLO,
    README,
    READONLY_PASSWORD,
    READONLY_USER,
    FtpServer,
)
from tests.ftp.test_gateway import (
    CREDENTIALS,
    MIB,
    WRONG_PASSWORD,
    error_of,
    ftp_backend,
    ftp_route,
    http_date,
    retries,
    token,
)
from tests.processes import Server, free_port, kairos_run


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, aioftp_ftp: FtpServer) -> Iterator[Server]:
    port = aioftp_ftp.port
    routes = [
        ftp_route("a", [ftp_backend(port, **CREDENTIALS)]),
        ftp_route("a-ro", [ftp_backend(port, username="${FTP_RO_USER}", password="${FTP_RO_PASSWORD}")]),
        ftp_route("a-badpw", [ftp_backend(port, username="${FTP_USER}", password="${FTP_WRONG}")]),
        ftp_route("a-failover", [ftp_backend(free_port(), **CREDENTIALS), ftp_backend(port, **CREDENTIALS)]),
    ]
    env = {
        "FTP_USER": FTP_USER,
        "FTP_PASSWORD": FTP_PASSWORD,
        "FTP_RO_USER": READONLY_USER,
        "FTP_RO_PASSWORD": READONLY_PASSWORD,
        "FTP_WRONG": WRONG_PASSWORD,
    }
    with kairos_run(module_tmp, {"version": 1, "routers": routes}, env=env) as server:
        yield server


def leftovers(root: Path) -> list[str]:
    """Temporary names of the gateway's uploads (``.NAME.kairos-….part`` / ``.old``) still on disk."""
    return sorted(str(path.relative_to(root)) for path in root.rglob(".*.kairos-*"))


# -- reading -----------------------------------------------------------------------------------


def test_directory_listing(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    response = client.get("/a/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    listing = response.json()
    assert listing["path"] == "/"
    entries = {entry["name"]: entry for entry in listing["entries"]}
    assert {"hello.txt", "data.bin", "docs", "empty"} <= set(entries)
    assert (entries["hello.txt"]["type"], entries["hello.txt"]["size"]) == ("file", len(HELLO))
    assert (entries["data.bin"]["type"], entries["data.bin"]["size"]) == ("file", MIB)
    assert entries["docs"]["type"] == "dir" and entries["empty"]["type"] == "dir"
    kinds = [entry["type"] for entry in listing["entries"]]
    assert kinds == sorted(kinds, key=lambda kind: kind != "dir")  # directories first
    moment = parsedate_to_datetime(http_date((aioftp_ftp.root / "hello.txt").stat().st_mtime))
    assert entries["hello.txt"]["modified"] == moment.isoformat().replace("+00:00", "Z")
    assert entries["hello.txt"]["permissions"] is None  # aioftp sends no perm / unix.mode fact

    for path in ("/a/docs/", "/a/docs"):
        docs = client.get(path)
        assert docs.status_code == 200, docs.text
        assert [(e["name"], e["type"], e["size"]) for e in docs.json()["entries"]] == [
            ("readme.md", "file", len(README))
        ]
    assert client.get("/a/empty/").json()["entries"] == []


def test_download_whole_and_ranges(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    data = (aioftp_ftp.root / "data.bin").read_bytes()
    response = client.get("/a/data.bin")
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-length"] == str(MIB)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["last-modified"] == http_date((aioftp_ftp.root / "data.bin").stat().st_mtime)
    assert client.get("/a/docs/readme.md").content == README

    for header, (first, last) in {"bytes=100-199": (100, 199), "bytes=-10": (MIB - 10, MIB - 1)}.items():
        ranged = client.get("/a/data.bin", headers={"Range": header})
        assert ranged.status_code == 206, (header, ranged.text)
        assert ranged.headers["content-range"] == f"bytes {first}-{last}/{MIB}"
        assert ranged.content == data[first : last + 1]
    error_of(client.get("/a/data.bin", headers={"Range": f"bytes={MIB}-"}), 416, "range_not_satisfiable")
    assert client.get("/a/hello.txt").content == HELLO  # the aborted transfers left nothing behind

    folder = aioftp_ftp.root / f"names-{token()}"
    folder.mkdir()
    try:
        (folder / "with space é.txt").write_bytes(b"spaced")
        assert client.get(f"/a/{folder.name}/with%20space%20%C3%A9.txt").content == b"spaced"
    finally:
        (folder / "with space é.txt").unlink()
        folder.rmdir()


def test_head_and_if_modified_since(client: httpx.Client) -> None:
    head = client.head("/a/data.bin")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(MIB)
    last_modified = head.headers["last-modified"]
    unchanged = client.get("/a/data.bin", headers={"If-Modified-Since": last_modified})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    earlier = http_date(parsedate_to_datetime(last_modified).timestamp() - 3600)
    changed = client.get("/a/hello.txt", headers={"If-Modified-Since": earlier})
    assert changed.status_code == 200 and changed.content == HELLO


def test_missing_is_404_and_wrong_password_401(client: httpx.Client) -> None:
    body = error_of(client.get("/a/no-such-file.txt"), 404, "not_found")
    assert "no-such-file.txt" in body["error"]
    error_of(client.get("/a/no-such-dir/"), 404, "not_found")
    error_of(client.delete("/a/no-such-file.txt"), 404, "not_found")
    refused = client.get("/a-badpw/hello.txt")
    error_of(refused, 401, "authentication_error")
    assert refused.headers["www-authenticate"].startswith("Basic")


# -- writing -----------------------------------------------------------------------------------


def test_put_creates_then_replaces_and_if_none_match(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    """aioftp refuses ``RNTO`` onto an existing file: the gateway moves the old file aside, puts the
    upload in its place and deletes the old one; nothing temporary is left behind."""
    root = aioftp_ftp.root
    name = f"put-{token()}.bin"
    first, second = os.urandom(200_000), os.urandom(300_000)
    try:
        created = client.put(f"/a/{name}", content=first)
        assert created.status_code == 201, created.text
        assert (root / name).read_bytes() == first

        replaced = client.put(f"/a/{name}", content=second)
        assert replaced.status_code == 204, replaced.text
        assert (root / name).read_bytes() == second
        assert client.get(f"/a/{name}").content == second

        refused = client.put(f"/a/{name}", content=b"third", headers={"If-None-Match": "*"})
        error_of(refused, 412, "precondition_failed")
        assert (root / name).read_bytes() == second

        nested = client.put(f"/a/docs/{name}", content=b"below docs\n", headers={"If-None-Match": "*"})
        assert nested.status_code == 201, nested.text
        assert (root / "docs" / name).read_bytes() == b"below docs\n"
        assert leftovers(root) == []
    finally:
        (root / name).unlink(missing_ok=True)
        (root / "docs" / name).unlink(missing_ok=True)


def test_read_only_user_is_403(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    assert client.get("/a-ro/hello.txt").content == HELLO
    name = f"readonly-{token()}.txt"
    error_of(client.put(f"/a-ro/{name}", content=b"nope"), 403, "forbidden")
    error_of(client.delete("/a-ro/hello.txt"), 403, "forbidden")
    assert not (aioftp_ftp.root / name).exists()
    assert (aioftp_ftp.root / "hello.txt").read_bytes() == HELLO
    assert leftovers(aioftp_ftp.root) == []


def test_mkdir_with_and_without_parents(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    root = aioftp_ftp.root
    top = f"newdir-{token()}"
    try:
        made = client.put(f"/a/{top}/")
        assert made.status_code == 201, made.text
        assert (root / top).is_dir()
        nested = client.put(f"/a/{top}/a/b/c/", params={"parents": "true"})
        assert nested.status_code == 201, nested.text
        assert (root / top / "a" / "b" / "c").is_dir()
        # aioftp's MKD would create x by itself: the gateway's rule holds anyway
        orphan = client.put(f"/a/{top}/x/y/")
        body = error_of(orphan, 404, "not_found")
        assert "parents=true" in body["error"]
        assert not (root / top / "x").exists()
    finally:
        for path in sorted((root / top).rglob("*"), reverse=True):
            path.rmdir()
        (root / top).rmdir()


def test_rename(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    root = aioftp_ftp.root
    name, moved_name, taken = (f"{kind}-{token()}.txt" for kind in ("rename", "renamed", "taken"))
    (root / name).write_bytes(b"to be moved\n")
    (root / taken).write_bytes(b"already here\n")
    try:
        moved = client.post(f"/a/{name}", params={"rename_to": f"/docs/{moved_name}"})
        assert moved.status_code == 204, moved.text
        assert moved.headers["location"] == f"/docs/{moved_name}"
        assert not (root / name).exists()
        assert (root / "docs" / moved_name).read_bytes() == b"to be moved\n"

        # aioftp refuses a taken name (550 path already exists): a conflict, not "not found"
        clash = client.post(f"/a/docs/{moved_name}", params={"rename_to": f"/{taken}"})
        body = error_of(clash, 409, "conflict")
        assert "exists" in body["error"]
        assert (root / "docs" / moved_name).read_bytes() == b"to be moved\n"
        assert (root / taken).read_bytes() == b"already here\n"
    finally:
        for path in (root / name, root / taken, root / "docs" / moved_name):
            path.unlink(missing_ok=True)


def test_delete_file_and_directory(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    root = aioftp_ftp.root
    name = f"delete-{token()}"
    (root / f"{name}.txt").write_bytes(b"bye\n")
    tree = root / f"{name}-dir"
    (tree / "inner").mkdir(parents=True)
    (tree / "inner" / "f.txt").write_bytes(b"f")
    (tree / "g.txt").write_bytes(b"g")
    try:
        gone = client.delete(f"/a/{name}.txt")
        assert gone.status_code == 204, gone.text
        assert not (root / f"{name}.txt").exists()

        error_of(client.delete(f"/a/{name}-dir"), 409, "conflict")
        assert (tree / "inner" / "f.txt").exists()
        removed = client.delete(f"/a/{name}-dir/", params={"recursive": "true"})
        assert removed.status_code == 204, removed.text
        assert not tree.exists()
        error_of(client.delete(f"/a/{name}.txt"), 404, "not_found")
    finally:
        (root / f"{name}.txt").unlink(missing_ok=True)


# -- backends and the pool ---------------------------------------------------------------------


def test_failover_from_a_dead_backend(client: httpx.Client, aioftp_ftp: FtpServer) -> None:
    before = retries(client)
    for _ in range(4):  # round robin: the dead first backend is picked at least once
        response = client.get("/a-failover/hello.txt")
        assert response.status_code == 200, response.text
        assert response.content == HELLO
    name = f"failover-{token()}.txt"
    try:
        for _ in range(2):
            stored = client.put(f"/a-failover/{name}", content=b"via aioftp\n")
            assert stored.status_code in (201, 204), stored.text
        assert (aioftp_ftp.root / name).read_bytes() == b"via aioftp\n"
    finally:
        (aioftp_ftp.root / name).unlink(missing_ok=True)
    assert retries(client) > before


def test_an_idle_connection_is_reused_without_noop(aioftp_ftp: FtpServer) -> None:
    """aioftp's server has no ``NOOP`` (``502``): the pool's idle probe still reuses the connection
    instead of logging in again for every request after ``probe_after`` idle seconds."""

    async def scenario() -> tuple[int, list[bytes]]:
        pool = FtpPool(probe_after=0.0)  # probe every reuse
        target = FtpTarget("127.0.0.1", aioftp_ftp.port, False, FTP_USER, FTP_PASSWORD)
        bodies = []
        try:
            for _ in range(3):
                async with pool.session(target) as lease:
                    stream = await lease.client.download_stream("/hello.txt")
                    bodies.append(await stream.read())
                    await stream.finish()
                await asyncio.sleep(0.01)  # idle longer than probe_after
        finally:
            pool.close()
        return pool.logins, bodies

    logins, bodies = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert bodies == [HELLO] * 3
    assert logins == 1
