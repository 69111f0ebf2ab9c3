"""The FTP path checks (kairos/ftp/paths.py) and the reply mapping, without a server."""

from __future__ import annotations

import aioftp
import pytest

from kairos.ftp.endpoint import _range, map_reply
from kairos.ftp.paths import BadFtpPath, check_name, ftp_path


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        ("/pub/a.txt", "/pub/a.txt"),
        ("/pub/dir/", "/pub/dir/"),
        ("/", "/"),
        ("/pub//a", "/pub/a"),
        ("/pub/with%20space.txt", "/pub/with space.txt"),
        ("/pub/%C3%A9t%C3%A9.txt", "/pub/été.txt"),
    ],
)
def test_paths_are_decoded_and_collapsed(built: str, expected: str) -> None:
    assert ftp_path(built) == expected


@pytest.mark.parametrize(
    ("built", "reason"),
    [
        ("/pub/../etc/passwd", "'..'"),
        ("/pub/%2e%2e/etc", "'..'"),
        ("/pub/a/./b", "'.'"),
        ("/pub/a%5C..%5Cb", "backslash"),
        ("/pub/x%0D%0ADELE%20y", "CR"),
        ("/pub/x%0Ay", "LF"),
        ("/pub/x%00y", "NUL"),
        ("/pub/%FF", "UTF-8"),
    ],
)
def test_escapes_and_injections_are_refused(built: str, reason: str) -> None:
    with pytest.raises(BadFtpPath, match=reason):
        ftp_path(built)


def test_a_rename_target_must_be_absolute() -> None:
    assert check_name("/b.txt", "rename_to") == "/b.txt"
    with pytest.raises(BadFtpPath, match="must start with '/'"):
        check_name("b.txt", "rename_to")


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-500", 100, (50, 99)),
        ("bytes=100-", 100, None),
        ("bytes=9-0", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("bytes=-0", 100, None),
        ("items=0-1", 100, None),
        ("bytes=0-0", 0, None),
    ],
)
def test_one_range_or_none(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert _range(header, size) == expected


def reply(code: str, text: str) -> aioftp.StatusCodeError:
    return aioftp.StatusCodeError(aioftp.Code("2xx"), aioftp.Code(code), [text])


@pytest.mark.parametrize(
    ("code", "text", "status", "kind"),
    [
        ("550", "No such file or directory.", 404, "not_found"),
        ("550", "Permission denied.", 403, "forbidden"),
        ("530", "Authentication failed.", 401, "authentication_error"),
        ("552", "Quota exceeded.", 413, "payload_too_large"),
        ("553", "File name not allowed.", 400, "bad_request"),
        ("421", "Too many connections.", 502, "upstream"),
        ("426", "Transfer aborted.", 502, "upstream"),
    ],
)
def test_ftp_replies_map_to_http(code: str, text: str, status: int, kind: str) -> None:
    failure = map_reply(reply(code, text), "GET /x")
    assert (failure.status, failure.kind) == (status, kind)
    assert f"FTP {code}" in failure.message
