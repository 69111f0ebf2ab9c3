"""litellm (~5 s to import) is loaded only when a route needs a provider: a gateway without AI
routes starts without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT

CHECK = """
import asyncio, sys
import kairos.app
from kairos.gateway import Gateway
from kairos.settings import Settings
assert "litellm" not in sys.modules, "importing kairos.app imported litellm"
config = {"version": 1, "routers": [{"external_path": "/x", "internal_path": "/x", "methods": ["GET"],
          "backends": [{"host": "http://127.0.0.1", "port": 9}],
          "ai_policy": {"enabled": True, "strategy": "latency_prediction"}}]}
gateway = Gateway(Settings(), config)
async def main():
    await gateway.startup()
    await gateway.shutdown()
asyncio.run(main())
assert "litellm" not in sys.modules, "a gateway without provider routes imported litellm"
print("ok")
"""


def test_gateway_without_provider_routes_never_imports_litellm(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
