"""Refreshes (or checks) the browser libraries the web dashboard serves itself: admin/static/vendor/.

Why vendored and not loaded from a CDN: the dashboard answers with a strict Content-Security-Policy,
``default-src 'self'``, so the browser may load scripts and styles from the gateway only; and an
operator's dashboard must keep working on a network that cannot reach a CDN. The files are therefore
copied into the repository, and VENDOR.json beside them records where each came from (package,
version, tarball URL, the registry's integrity) and the sha256 of the file as written, so a review of
a refresh sees exactly which versions and bytes changed.

    python scripts/vendor_static.py           # resolve, download, verify, write (needs registry.npmjs.org)
    python scripts/vendor_static.py --check   # no network: every file in VENDOR.json has its sha256

Only the standard library is used, so the script runs before (or without) the project's venv.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = ROOT / "admin" / "static" / "vendor"
MANIFEST = "VENDOR.json"
REGISTRY = "https://registry.npmjs.org"
# Registry documents are ~100 kB and these tarballs ~1 MB: anything far larger is not what we asked for.
MAX_DOWNLOAD = 32 * 1024 * 1024
TIMEOUT = 60.0


@dataclass(frozen=True)
class Pin:
    """One npm package to vendor: the release line it may move within, and the files taken from it.

    The line is a version prefix (``(2,)`` = newest 2.x.y, ``(1, 6)`` = newest 1.6.y): a refresh picks
    up fixes within it, while a new major (htmx 4, whose attributes and events differ) stays a
    deliberate change of this list.
    """

    package: str
    line: tuple[int, ...]
    files: dict[str, str]  # path inside the tarball -> name written in the vendor directory


PINS: tuple[Pin, ...] = (
    Pin(
        "htmx.org",
        (2,),
        {"package/dist/htmx.min.js": "htmx.min.js", "package/LICENSE": "LICENSE-htmx"},
    ),
    Pin(
        "uplot",
        (1, 6),
        {
            "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uPlot.min.css",
            "package/LICENSE": "LICENSE-uplot",
        },
    ),
)

# Release versions only: a pre-release (2.0.0-beta4) never counts as the newest of a line.
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# A source map reference: `//# sourceMappingURL=x` on its own line (JS) or `/*# sourceMappingURL=x */`
# (CSS); `//@` is the older spelling. Only line-start JS comments count, as for the browser: the same
# text inside a string literal is code, not a reference.
_JS_SOURCE_MAP = re.compile(rb"^[ \t]*//[#@][ \t]*sourceMappingURL=([^\s'\"]*)[ \t]*\r?\n?", re.MULTILINE)
_CSS_SOURCE_MAP = re.compile(rb"/\*[#@][ \t]*sourceMappingURL=([^\s*]*)[ \t]*\*/[ \t]*\r?\n?")


class VendorError(Exception):
    """A refresh that must not write anything: bad registry answer, integrity mismatch, missing file."""


def parse_release(version: str) -> tuple[int, ...] | None:
    """``"2.0.11"`` -> ``(2, 0, 11)``; None for a pre-release or anything else that is not x.y.z."""
    match = _RELEASE.fullmatch(version)
    return tuple(int(part) for part in match.groups()) if match else None


def newest_in_line(versions: dict[str, Any], line: tuple[int, ...]) -> str:
    """The highest release of ``line`` by numeric version: the registry lists versions in publish
    order (2.0.10 after 2.0.9, 2.0.4 after 2.0.10, ...), so neither the last key nor a string sort
    is the newest. Deprecated releases are skipped, as npm's own resolver does when it can."""
    candidates: list[tuple[tuple[int, ...], str]] = []
    for version, meta in versions.items():
        release = parse_release(version)
        if release is None or release[: len(line)] != line:
            continue
        if isinstance(meta, dict) and meta.get("deprecated"):
            continue
        candidates.append((release, version))
    if not candidates:
        raise VendorError(f"no release in line {'.'.join(map(str, line))}.x")
    return max(candidates)[1]


def check_integrity(data: bytes, integrity: str) -> None:
    """Verifies ``data`` against an SRI string (``sha512-<base64>``, possibly several, space separated)
    as npm does; a sha512 entry is required: the weaker sha1 ``shasum`` alone is not accepted."""
    expected = [entry[len("sha512-") :] for entry in integrity.split() if entry.startswith("sha512-")]
    if not expected:
        raise VendorError(f"no sha512 in integrity {integrity!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    if actual not in expected:
        raise VendorError(f"integrity mismatch: registry says {integrity}, download is sha512-{actual}")


def strip_source_maps(data: bytes, vendored: Collection[str] = ()) -> bytes:
    """Removes source map references the browser could not satisfy: a reference to a remote host would
    be fetched (or refused by the CSP) when devtools open, and one to a local ``.map`` that is not
    vendored beside the file shows as a 404 in the console. Kept: ``data:`` maps (nothing to fetch)
    and relative names listed in ``vendored``."""

    def keep_or_drop(match: re.Match[bytes]) -> bytes:
        target = match.group(1).decode("utf-8", "replace")
        if target.startswith("data:"):
            return match.group(0)
        local = "/" not in target and ":" not in target and target in vendored
        return match.group(0) if local else b""

    return _CSS_SOURCE_MAP.sub(keep_or_drop, _JS_SOURCE_MAP.sub(keep_or_drop, data))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(url: str) -> bytes:
    """GET over https from the registry only, bounded in size and time."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or parsed.hostname != urllib.parse.urlsplit(REGISTRY).hostname:
        raise VendorError(f"refusing to download from outside {REGISTRY}: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "kairos-vendor-static"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        final = urllib.parse.urlsplit(response.geturl())
        if (final.scheme, final.hostname) != (parsed.scheme, parsed.hostname):
            raise VendorError(f"{url}: redirected outside {REGISTRY}, to {response.geturl()}")
        data: bytes = response.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        raise VendorError(f"{url}: larger than {MAX_DOWNLOAD} bytes")
    return data


def resolve(pin: Pin) -> tuple[str, str, str]:
    """(version, tarball URL, integrity) of the newest release of the pin's line, from the registry."""
    document = json.loads(fetch(f"{REGISTRY}/{urllib.parse.quote(pin.package, safe='@')}"))
    version = newest_in_line(document.get("versions", {}), pin.line)
    dist = document["versions"][version].get("dist", {})
    tarball, integrity = dist.get("tarball"), dist.get("integrity")
    if not isinstance(tarball, str) or not isinstance(integrity, str):
        raise VendorError(f"{pin.package}@{version}: registry gives no dist.tarball / dist.integrity")
    return version, tarball, integrity


def extract(tarball: bytes, members: Collection[str]) -> dict[str, bytes]:
    """Reads just ``members`` out of the tarball, by name, into memory: nothing else is unpacked, so a
    path in the archive can never write outside the vendor directory."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            if member.name in members and member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    found[member.name] = handle.read()
    missing = sorted(set(members) - set(found))
    if missing:
        raise VendorError(f"not in the tarball: {', '.join(missing)}")
    return found


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` in one step, so an interrupted refresh never leaves half a file behind."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    # NamedTemporaryFile makes the file 0600: the server serving these may run as another user.
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def refresh(directory: Path) -> dict[str, Any]:
    """Downloads and verifies every pin first, then writes the files and VENDOR.json: a package that
    cannot be resolved, downloaded or verified leaves the directory as it was."""
    files: dict[str, dict[str, Any]] = {}
    contents: dict[str, bytes] = {}
    for pin in PINS:
        version, tarball_url, integrity = resolve(pin)
        tarball = fetch(tarball_url)
        check_integrity(tarball, integrity)
        extracted = extract(tarball, pin.files)
        for source, name in pin.files.items():
            upstream = extracted[source]
            written = strip_source_maps(upstream, vendored=pin.files.values())
            entry: dict[str, Any] = {
                "package": pin.package,
                "version": version,
                "source": source,
                "tarball": tarball_url,
                "integrity": integrity,
                "sha256": sha256(written),
                "size": len(written),
            }
            if written != upstream:
                # The bytes differ from the tarball's: say how, and give the original's hash too.
                entry["modified"] = "sourceMappingURL comment removed (no map is vendored)"
                entry["upstream_sha256"] = sha256(upstream)
            files[name] = entry
            contents[name] = written
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        write_atomic(directory / name, data)
    manifest = {
        "generated_by": "scripts/vendor_static.py (refresh: run it; verify: --check). Do not edit by hand.",
        "files": files,
    }
    write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def check(directory: Path) -> list[str]:
    """The problems found, none when every file VENDOR.json lists exists with its recorded sha256 and
    no other file sits beside them (a file outside the manifest would be served without review)."""
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{manifest_path}: unreadable manifest ({error})"]
    problems: list[str] = []
    for name, entry in sorted(files.items()):
        if Path(name).name != name or name in ("", ".", ".."):
            problems.append(f"{name}: not a plain file name")
            continue
        path = directory / name
        recorded = entry.get("sha256") if isinstance(entry, dict) else None
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256(path.read_bytes())) != recorded:
            problems.append(f"{name}: sha256 {actual} != recorded {recorded}")
    listed = {*files, MANIFEST}
    for path in sorted(directory.iterdir()):
        if path.name not in listed and not path.name.startswith("."):
            problems.append(f"{path.name}: not listed in {MANIFEST}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="verify the files against VENDOR.json")
    parser.add_argument("--dir", type=Path, default=VENDOR_DIR, help=f"default: {VENDOR_DIR}")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        problems = check(directory)
        for problem in problems:
            print(f"vendor check: {problem}", file=sys.stderr)
        if problems:
            print(f"vendor check: FAILED; refresh with: python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"vendor check: {directory}: all files match {MANIFEST}")
        return 0
    try:
        manifest = refresh(directory)
    except (VendorError, OSError, ValueError, KeyError, tarfile.TarError) as error:
        print(f"vendor refresh failed: {error}", file=sys.stderr)
        return 1
    for name, entry in manifest["files"].items():
        print(f"{name}: {entry['package']}@{entry['version']} {entry['size']} bytes sha256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
