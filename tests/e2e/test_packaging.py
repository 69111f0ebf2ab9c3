"""The built wheel carries what an installed gateway needs (the embedded default config above all)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.processes import ROOT


def test_wheel_contains_default_config_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kairos-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "kairos/config/default_config.json" in names
    assert "kairos/py.typed" in names
    assert "kairos = kairos.cli:main" in entry_points
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
