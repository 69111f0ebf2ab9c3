"""Print line coverage per package of ``kairos`` from the combined coverage data (``make test``).

coverage.py reports per file or in total; a package view shows where the untested code lives (the
proxy engines, the admin API, ...). Reads ``coverage json`` output; no dependency beyond coverage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "coverage.json"
        subprocess.run(
            [sys.executable, "-m", "coverage", "json", "-q", "-o", str(target)], check=True
        )
        data = json.loads(target.read_text())
    statements: dict[str, int] = defaultdict(int)
    covered: dict[str, int] = defaultdict(int)
    for path, info in data["files"].items():
        parts = Path(path).parts
        start = parts.index("kairos") if "kairos" in parts else 0
        package = ".".join(parts[start : len(parts) - 1]) or "kairos"
        statements[package] += info["summary"]["num_statements"]
        covered[package] += info["summary"]["covered_lines"]
    width = max(map(len, statements))
    print(f"{'package':<{width}}  statements  covered")
    for package in sorted(statements):
        total = statements[package]
        share = 100.0 * covered[package] / total if total else 100.0
        print(f"{package:<{width}}  {total:>10}  {share:6.1f}%")
    total_statements = sum(statements.values())
    total_covered = sum(covered.values())
    print(f"{'total':<{width}}  {total_statements:>10}  {100.0 * total_covered / total_statements:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
