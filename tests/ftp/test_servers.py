"""The FTP servers the FTP file API tests drive are real: checked with aioftp's client directly.

What these tests pin about aioftp's client (0.28), which the gateway's FTP engine relies on:

- It tries EPSV first and falls back to PASV only on a 50x answer (``passive_commands``).
- It ignores the address a PASV answer advertises and connects to the control connection's host,
  unless ``trust_server_pasv_ipv4_address=True`` (then it follows the advertised address).
- A bad reply is ``aioftp.StatusCodeError``: ``received_codes`` / ``expected_codes`` are tuples of
  ``aioftp.Code`` (a ``str``: ``"421"``), ``info`` the reply's text lines.
- A data connection cut short is not an error by itself: the stream ends early (EOF) and the
  error is the final reply (426), raised when the stream is finished (leaving ``async with``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import aioftp
import pytest

from tests.ftp.conftest import HELLO, README, FtpServer
from tests.processes import hostile_ftp_server
from tests.servers.hostile_ftp import FILES

T = TypeVar("T")
TIMEOUT = 30.0  # every scenario, end to end
ROOT_LISTING = {"hello.txt": "file", "data.bin": "file", "docs": "dir", "empty": "dir"}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, TIMEOUT)

    return asyncio.run(bounded())


def plain(port: int, user: str, password: str, **options: Any) -> Any:
    """``aioftp.Client.context`` with bounded waits (an async context manager)."""
    return aioftp.Client.context(
        "127.0.0.1", port, user, password, socket_timeout=10, connection_timeout=5, **options
    )


@asynccontextmanager
async def explicit_tls(server: FtpServer, context: ssl.SSLContext) -> AsyncIterator[aioftp.Client]:
    """Explicit FTPS with our CA: ``Client.context(upgrade_to_tls=True)`` would use the system CAs
    (``upgrade_to_tls()`` without a context), so the steps are spelled out."""
    client = aioftp.Client(socket_timeout=10, connection_timeout=5)
    try:
        await client.connect(server.host, server.port)
        await client.upgrade_to_tls(context)  # AUTH TLS, handshake, PBSZ 0, PROT P
        await client.login(server.user, server.password)
        yield client
        await client.quit()
    finally:
        client.close()


async def download(client: aioftp.Client, path: str) -> bytes:
    received = bytearray()
    async with client.download_stream(path) as stream:
        async for block in stream.iter_by_block():
            received += block
    return bytes(received)


async def names(client: aioftp.Client, path: str = "") -> dict[str, str]:
    return {PurePosixPath(name).name: info["type"] for name, info in await client.list(path)}


def codes(error: pytest.ExceptionInfo[aioftp.StatusCodeError]) -> tuple[str, ...]:
    return tuple(str(code) for code in error.value.received_codes)


# --- pyftpdlib, plain


def test_login_list_and_byte_exact_download(ftp: FtpServer) -> None:
    async def scenario() -> None:
        async with plain(ftp.port, ftp.user, ftp.password) as client:
            assert await names(client) == ROOT_LISTING
            assert await names(client, "docs") == {"readme.md": "file"}
            assert await names(client, "empty") == {}
            assert await download(client, "hello.txt") == HELLO
            assert await download(client, "/docs/readme.md") == README
            assert await download(client, "data.bin") == (ftp.root / "data.bin").read_bytes()
            assert (await client.stat("data.bin"))["size"] == str(1 << 20)

    run(scenario())


def test_upload_rename_delete_and_mkdir(ftp: FtpServer) -> None:
    token = uuid.uuid4().hex[:8]
    payload = bytes(range(256)) * 300

    async def scenario() -> None:
        async with plain(ftp.port, ftp.user, ftp.password) as client:
            async with client.upload_stream(f"up-{token}.bin") as stream:
                await stream.write(payload)
            assert (ftp.root / f"up-{token}.bin").read_bytes() == payload

            await client.rename(f"up-{token}.bin", f"docs/moved-{token}.bin")
            assert not (ftp.root / f"up-{token}.bin").exists()
            assert await download(client, f"docs/moved-{token}.bin") == payload

            await client.remove_file(f"docs/moved-{token}.bin")
            assert not (ftp.root / "docs" / f"moved-{token}.bin").exists()

            await client.make_directory(f"dir-{token}/inner")  # parents=True: MKD twice
            assert (ftp.root / f"dir-{token}" / "inner").is_dir()
            await client.remove(f"dir-{token}")  # recursive: RMD inner, then RMD the directory
            assert not (ftp.root / f"dir-{token}").exists()

            with pytest.raises(aioftp.StatusCodeError) as missing:
                await client.remove_file(f"nothing-{token}.bin")
            assert codes(missing) == ("550",)

    run(scenario())


def test_wrong_password_and_anonymous_are_refused(ftp: FtpServer) -> None:
    async def login(user: str, password: str) -> None:
        async with plain(ftp.port, user, password):
            pass

    for user, password in ((ftp.user, "wrong"), ("anonymous", "guest@example.com")):
        with pytest.raises(aioftp.StatusCodeError) as refused:
            run(login(user, password))
        assert codes(refused) == ("530",)


def test_read_only_user_downloads_but_cannot_upload(ftp: FtpServer) -> None:
    token = uuid.uuid4().hex[:8]

    async def scenario() -> None:
        async with plain(ftp.port, ftp.readonly_user, ftp.readonly_password) as client:
            assert await download(client, "hello.txt") == HELLO
            with pytest.raises(aioftp.StatusCodeError) as refused:
                async with client.upload_stream(f"ro-{token}.bin") as stream:
                    await stream.write(b"nope")
            assert codes(refused) == ("550",)
            with pytest.raises(aioftp.StatusCodeError) as refused:
                await client.remove_file("hello.txt")
            assert codes(refused) == ("550",)

    run(scenario())
    assert not (ftp.root / f"ro-{token}.bin").exists()
    assert (ftp.root / "hello.txt").read_bytes() == HELLO


# --- pyftpdlib, explicit FTPS


def test_ftps_login_list_and_download(ftps: FtpServer) -> None:
    async def scenario() -> None:
        async with explicit_tls(ftps, ftps.ssl_context()) as client:
            assert client.stream.writer.get_extra_info("ssl_object") is not None
            assert await names(client) == ROOT_LISTING
            assert await download(client, "data.bin") == (ftps.root / "data.bin").read_bytes()

    run(scenario())


def test_ftps_refuses_a_plain_login(ftps: FtpServer) -> None:
    with pytest.raises(aioftp.StatusCodeError) as refused:
        run(plain(ftps.port, ftps.user, ftps.password).__aenter__())
    assert codes(refused) == ("550",)  # "SSL/TLS required on the control channel."


def test_ftps_certificate_from_an_unknown_ca_is_refused(ftps: FtpServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        run(explicit_tls(ftps, ssl.create_default_context()).__aenter__())


# --- the hostile server


def record_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_hostile_normal_is_a_working_baseline(tmp_path: Path) -> None:
    record = tmp_path / "record.json"

    async def scenario(port: int) -> None:
        async with plain(port, "kairos", "secret") as client:
            assert await names(client) == dict.fromkeys(FILES, "file")
            assert await names(client, "") == await names(client, "/")
            assert await download(client, "big.bin") == FILES["big.bin"]
            listed = [PurePosixPath(name).name async for name, _ in client.list(raw_command="LIST")]
            assert listed == list(FILES)

    with hostile_ftp_server(tmp_path, "normal", record) as server:
        run(scenario(server.port))
    seen = record_of(record)
    assert "EPSV" in seen["commands"] and "PASV" not in seen["commands"]  # aioftp prefers EPSV
    assert {connection["address"] for connection in seen["data_connections"]} == {"127.0.0.1"}


def test_pasv_elsewhere_aioftp_connects_to_the_control_peer_by_default(tmp_path: Path) -> None:
    """EPSV is refused (500) so aioftp falls back to PASV; it ignores the advertised 127.0.0.2."""
    record = tmp_path / "record.json"

    async def scenario(port: int, passive: tuple[str, ...]) -> None:
        async with plain(port, "kairos", "secret", passive_commands=passive) as client:
            assert await download(client, "hello.txt") == FILES["hello.txt"]

    with hostile_ftp_server(tmp_path, "pasv-elsewhere", record) as server:
        run(scenario(server.port, ("epsv", "pasv")))
        run(scenario(server.port, ("pasv",)))
    seen = record_of(record)
    commands = [command.split(" ")[0] for command in seen["commands"]]
    assert commands.count("EPSV") == 1  # the first client only: the second asked for PASV alone
    assert commands.count("PASV") == 2
    assert [connection["address"] for connection in seen["data_connections"]] == ["127.0.0.1", "127.0.0.1"]


def test_pasv_elsewhere_a_client_trusting_the_advertised_address_fails(tmp_path: Path) -> None:
    record = tmp_path / "record.json"

    async def scenario(port: int) -> None:
        client = aioftp.Client(
            socket_timeout=10,
            connection_timeout=5,
            passive_commands=("pasv",),
            trust_server_pasv_ipv4_address=True,
        )
        try:
            await client.connect("127.0.0.1", port)
            await client.login("kairos", "secret")
            await download(client, "hello.txt")
        finally:
            client.close()

    refused = (aioftp.StatusCodeError, ConnectionRefusedError)
    with hostile_ftp_server(tmp_path, "pasv-elsewhere", record) as server, pytest.raises(refused) as failed:
        run(scenario(server.port))
    if isinstance(failed.value, aioftp.StatusCodeError):  # the trap on 127.0.0.2 took the connection
        assert [str(code) for code in failed.value.received_codes] == ["425"]
        data_connections = record_of(record)["data_connections"]
        assert [connection["address"] for connection in data_connections] == ["127.0.0.2"]


def test_cut_transfer_gives_a_short_download_and_426(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        async with plain(port, "kairos", "secret") as client:
            assert await names(client) == dict.fromkeys(FILES, "file")  # listings are honest
            _, size = await client.command("SIZE big.bin", "213")
            assert size == [f" {len(FILES['big.bin'])}"]
            received = bytearray()
            with pytest.raises(aioftp.StatusCodeError) as aborted:
                async with client.download_stream("big.bin") as stream:
                    async for block in stream.iter_by_block():
                        received += block
            assert codes(aborted) == ("426",)
            assert aborted.value.info == [" Connection closed; transfer aborted."]
            assert bytes(received) == FILES["big.bin"][: len(FILES["big.bin"]) // 2]

    with hostile_ftp_server(tmp_path, "cut-transfer") as server:
        run(scenario(server.port))


def test_login_421_fails_the_login(tmp_path: Path) -> None:
    record = tmp_path / "record.json"

    async def scenario(port: int) -> None:
        async with plain(port, "kairos", "secret"):
            pass

    with (
        hostile_ftp_server(tmp_path, "login-421", record) as server,
        pytest.raises(aioftp.StatusCodeError) as refused,
    ):
        run(scenario(server.port))
    assert codes(refused) == ("421",)
    assert [str(code) for code in refused.value.expected_codes] == ["230", "33x"]
    assert record_of(record)["commands"] == ["USER kairos"]
