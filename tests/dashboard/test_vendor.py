"""The dashboard's vendored browser libraries (admin/static/vendor/, written by scripts/vendor_static.py)
are exactly the reviewed bytes VENDOR.json records, and nothing in them makes the browser reach for
another host: the dashboard's CSP (``default-src 'self'``) would refuse it, and a console full of CSP
errors or 404s hides the real ones."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.vendor_static import (
    MANIFEST,
    VendorError,
    check_integrity,
    newest_in_line,
    strip_source_maps,
)

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "admin" / "static" / "vendor"
# Loaded by the browser (the LICENSE files are served for people, never fetched by a page).
LOADED = (".js", ".css")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/vendor_static.py", "--check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manifest_files() -> dict[str, Any]:
    files: dict[str, Any] = json.loads((VENDOR / MANIFEST).read_text())["files"]
    return files


def test_vendored_files_match_the_manifest() -> None:
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(manifest_files()))
def test_a_corrupted_file_fails_the_check_by_name(name: str, tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    assert run_check("--dir", str(copy)).returncode == 0
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    result = run_check("--dir", str(copy))
    assert result.returncode == 1
    assert name in result.stdout + result.stderr
    mismatches = [line for line in result.stderr.splitlines() if "sha256" in line]
    assert len(mismatches) == 1 and name in mismatches[0], result.stderr


def test_a_missing_or_unlisted_file_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    (copy / "htmx.min.js").unlink()
    (copy / "extra.js").write_text("alert(1)\n")
    result = run_check("--dir", str(copy))
    assert result.returncode == 1
    assert "htmx.min.js: missing" in result.stderr
    assert "extra.js: not listed" in result.stderr


def test_versions_are_the_pinned_lines() -> None:
    files = manifest_files()
    assert {name for name, entry in files.items() if entry["package"] == "htmx.org"} == {
        "htmx.min.js",
        "LICENSE-htmx",
    }
    for entry in files.values():
        line = {"htmx.org": "2.", "uplot": "1.6."}[entry["package"]]
        assert entry["version"].startswith(line)
        assert entry["integrity"].startswith("sha512-")
        assert entry["tarball"].startswith("https://registry.npmjs.org/")


@pytest.mark.parametrize("name", sorted(name for name in manifest_files() if name.endswith(LOADED)))
def test_loaded_files_reference_no_other_host(name: str) -> None:
    text = (VENDOR / name).read_text()
    # No source map reference is left (none is vendored): it would be a 404 or a blocked fetch.
    assert "sourceMappingURL" not in text
    # A URL may appear in the leading license banner (uPlot's names its repository), which the browser
    # never fetches; anywhere else it could be a request at load.
    body = re.sub(r"\A(\s*/\*.*?\*/)*", "", text, flags=re.DOTALL)
    assert not re.search(r"https?://", body), re.findall(r".{0,40}https?://.{0,40}", body)
    if name.endswith(".css"):
        assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", body)


def test_source_map_references_that_cannot_load_are_stripped() -> None:
    js = b"var a=1;\n//# sourceMappingURL=htmx.min.js.map\n"
    assert strip_source_maps(js) == b"var a=1;\n"
    assert strip_source_maps(b"x();\n//@ sourceMappingURL=https://cdn.example/x.map") == b"x();\n"
    css = b".u{color:red}\n/*# sourceMappingURL=uPlot.min.css.map */\n"
    assert strip_source_maps(css) == b".u{color:red}\n"
    # Kept: an inline map (nothing to fetch), one vendored beside the file, and the text inside code.
    inline = b"f();\n//# sourceMappingURL=data:application/json;base64,e30=\n"
    assert strip_source_maps(inline) == inline
    beside = b"f();\n//# sourceMappingURL=f.js.map\n"
    assert strip_source_maps(beside, vendored={"f.js.map"}) == beside
    code = b'var s="//# sourceMappingURL=";\n'
    assert strip_source_maps(code) == code


def test_newest_release_is_numeric_not_publish_order() -> None:
    # The registry's own order: 2.0.10 comes before 2.0.4, and a later major and pre-releases exist.
    versions: dict[str, Any] = {
        v: {} for v in ["1.9.12", "2.0.0-beta4", "2.0.0", "2.0.10", "2.0.4", "2.0.9", "2.0.11", "4.0.1"]
    }
    assert newest_in_line(versions, (2,)) == "2.0.11"
    versions["2.0.11"] = {"deprecated": "broken release"}
    assert newest_in_line(versions, (2,)) == "2.0.10"
    assert newest_in_line(versions, (1, 9)) == "1.9.12"
    with pytest.raises(VendorError):
        newest_in_line(versions, (3,))


def test_integrity_mismatch_is_refused() -> None:
    sri = "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
    check_integrity(b"", sri)
    with pytest.raises(VendorError):
        check_integrity(b"tampered", sri)
    with pytest.raises(VendorError):
        check_integrity(b"", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=")
