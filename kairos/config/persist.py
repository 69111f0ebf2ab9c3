"""Writing config.json so that a crash, a full disk or a bad edit never leaves a broken file.

The new text goes to a temporary file in the same directory, is fsynced, and replaces the old
file with one atomic rename; the previous file is kept as ``<name>.bak`` (a hard link when the
filesystem allows, so there is no moment without a config file). Readers therefore see the old
file or the new one, never half of either. The file's permission bits are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def render_document(document: Any) -> str:
    """The JSON text we write: two-space indent like kairos-rs, keys in the order they were read."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``; on any error the old file is untouched (OSError raised)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    mode: int | None = None
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o7777
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            with contextlib.suppress(FileNotFoundError):
                backup.unlink()
            try:
                os.link(path, backup)
            except OSError:  # no hard links here (some network filesystems): copy instead
                backup.write_bytes(path.read_bytes())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
