"""The FTP path a request names, checked before any command is sent.

The route's ``internal_path`` is built with the matched parameters exactly as for HTTP (each
parameter re-encoded as one segment, a catch-all keeping its segments), then percent-decoded: FTP
names are plain text. What is refused, with 400, before the FTP server hears of it:

- CR, LF and NUL anywhere: they would end the FTP command and start another (command injection);
- a backslash: some servers (IIS, FileZilla Server) read it as a separator, so ``..\\`` climbs;
- ``.`` and ``..`` segments, also those that only appear once decoded (``%2e%2e``): the path must
  stay under ``internal_path``. The router already refuses dot segments in parameters unless a
  route allows them; this is the FTP endpoint's own check, whatever the route says;
- bytes that are not UTF-8 once decoded.

Empty segments (``a//b``) are collapsed. A trailing ``/`` is kept: it says "a directory".
"""

from __future__ import annotations

from urllib.parse import unquote

_FORBIDDEN = {"\r": "CR", "\n": "LF", "\x00": "NUL"}


class BadFtpPath(ValueError):
    """The request names no path the gateway may send to an FTP server; the message says why."""


def ftp_path(built: str) -> str:
    """The decoded, checked FTP path for an upstream path built from ``internal_path``."""
    try:
        path = unquote(built, errors="strict")
    except UnicodeDecodeError:
        raise BadFtpPath("the path is not UTF-8 once percent-decoded") from None
    for character, name in _FORBIDDEN.items():
        if character in path:
            raise BadFtpPath(f"the path holds a {name} character, which FTP commands cannot carry")
    if "\\" in path:
        raise BadFtpPath("the path holds a backslash")
    segments = [segment for segment in path.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise BadFtpPath("the path holds a '.' or '..' segment: it must stay under the route's internal_path")
    directory = path.endswith("/") and bool(segments)
    return "/" + "/".join(segments) + ("/" if directory else "")


def check_name(name: str, what: str) -> str:
    """A path given in a query parameter (``?rename_to=``): the same rules, and it must be absolute."""
    if not name.startswith("/"):
        raise BadFtpPath(f"{what} must start with '/' (got {name!r})")
    return ftp_path(name)
