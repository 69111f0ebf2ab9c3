"""The directory listing reader of kairos/ftp/endpoint.py (``_listing``) in process, on listings a real
server would not send: lines split anywhere across reads, ``LIST`` when ``MLSD`` is refused, and
what a hostile server may send instead of a listing (a line without end, lines that do not parse,
too many entries). aioftp's own line parsers are used, as in the gateway; only the data connection
is scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aioftp
import pytest

from kairos.ftp import endpoint
from kairos.ftp.endpoint import FtpFailure, _listing

T = TypeVar("T")
MLSD = (
    b"type=cdir;modify=20260101120000; .\r\n"
    b"type=pdir;modify=20260101120000; ..\r\n"
    b"type=file;size=15;modify=20260102030405;perm=r; hello.txt\r\n"
    b"type=dir;modify=20260101120000; docs\r\n"
    b"type=file;size=3;modify=20260101120000.123; with space.txt\r\n"
    b"type=OS.unix=slink:/x;modify=20260101120000; link\r\n"
)
LIST = (
    b"-rw-r--r--   1 owner group         15 Jan 02  2026 hello.txt\r\n"
    b"drwxr-xr-x 2 o g 4096 Jan 01  2026 docs\r\n"
)


class _Stream:
    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks
        self.finished = False

    async def _iterate(self) -> AsyncIterator[bytes]:
        for block in self.blocks:
            yield block

    def iter_by_block(self, count: int) -> AsyncIterator[bytes]:
        return self._iterate()

    async def finish(self) -> None:
        self.finished = True


class _Client(aioftp.Client):
    """aioftp's client with a scripted data connection: ``MLSD`` answers ``mlsd`` (or 500 when it is
    None), ``LIST`` answers ``listing``."""

    def __init__(self, mlsd: list[bytes] | None, listing: list[bytes] | None = None) -> None:
        super().__init__()
        self.answers = {"MLSD": mlsd, "LIST": listing}
        self.commands: list[str] = []
        self.streams: list[_Stream] = []

    def get_stream(self, command: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """Awaited by the endpoint as aioftp's (an awaitable that is also an async context manager)."""
        return self._scripted(command)

    async def _scripted(self, command: str | None) -> _Stream:
        assert command is not None
        self.commands.append(command)
        blocks = self.answers[command.split()[0]]
        if blocks is None:
            raise aioftp.StatusCodeError(aioftp.Code("1xx"), aioftp.Code("500"), "unknown command")
        stream = _Stream(blocks)
        self.streams.append(stream)
        return stream


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def test_mlsd_entries_wherever_the_reads_split_the_lines() -> None:
    whole = run(_listing(_Client([MLSD]), "/dir/"))
    assert [(e["name"], e["type"], e["size"]) for e in whole] == [
        ("docs", "dir", None),
        ("hello.txt", "file", 15),
        ("link", "link", None),
        ("with space.txt", "file", 3),
    ]
    hello = next(entry for entry in whole if entry["name"] == "hello.txt")
    assert hello["modified"] == "2026-01-02T03:04:05Z"
    assert hello["permissions"] == "r"
    for size in (1, 2, 7, 64, len(MLSD) - 1):
        client = _Client(pieces(MLSD, size))
        assert run(_listing(client, "/dir/")) == whole, size
        assert client.commands == ["MLSD /dir"]
        assert client.streams[0].finished
    unterminated = _Client([MLSD.rstrip(b"\r\n")])  # the last line without its CRLF still counts
    assert run(_listing(unterminated, "/dir/")) == whole


def test_list_when_mlsd_is_refused() -> None:
    client = _Client(None, pieces(LIST, 5))
    entries = run(_listing(client, "/"))
    assert client.commands == ["MLSD /", "LIST /"]
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [
        ("docs", "dir", 4096),
        ("hello.txt", "file", 15),
    ]


@pytest.mark.parametrize(
    ("blocks", "said"),
    [
        ([b"type=file;size=1; " + b"x" * (80 * 1024)], "longer than"),  # no end of line in sight
        ([b"x" * 40_000, b"y" * 40_000], "longer than"),
        ([b"no facts and no name at all\r\n"], None),
    ],
    ids=["one-read", "two-reads", "garbage-list"],
)
def test_a_hostile_listing_is_a_502(blocks: list[bytes], said: str | None) -> None:
    with pytest.raises(FtpFailure) as caught:
        run(_listing(_Client(None, blocks) if said is None else _Client(blocks), "/"))
    assert caught.value.status == 502
    if said is not None:
        assert said in caught.value.message


def test_too_many_entries_is_a_502(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "MAX_LISTING", 2)
    with pytest.raises(FtpFailure) as caught:
        run(_listing(_Client([MLSD]), "/"))
    assert caught.value.status == 502
    assert "more than 2 entries" in caught.value.message
    for endless in ([b"\r\n" * 10], pieces(b"\n" * 10, 3)):  # empty lines count too
        with pytest.raises(FtpFailure) as caught:
            run(_listing(_Client(endless), "/"))
        assert "more than 2 entries" in caught.value.message
    assert run(_listing(_Client([b"\r\n" * 4]), "/")) == []  # a few are skipped
