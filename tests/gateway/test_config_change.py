"""Gateway.change (what the admin API's writes go through): validate, persist, apply — and never
overwrite a change that landed while the edit was being made."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kairos.config import ConfigError
from kairos.config.problems import StaleConfig
from kairos.gateway import Gateway
from kairos.settings import Settings


def document(*paths: str) -> dict[str, Any]:
    return {
        "version": 1,
        "x-operator-note": "kept",
        "routers": [
            {
                "external_path": path,
                "internal_path": path,
                "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": 9}],
            }
            for path in paths
        ],
    }


def gateway_on(path: Path) -> Gateway:
    return Gateway(Settings(config_path=path, config_watch=False))


def test_an_edit_of_an_older_generation_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document("/a")))
    gateway = gateway_on(path)

    async def scenario() -> None:
        await gateway.reload("startup")
        based_on = gateway.generation
        edited = copy.deepcopy(gateway.config_document)
        edited["routers"].append(document("/from-admin")["routers"][0])
        path.write_text(json.dumps(document("/a", "/from-file")))  # lands meanwhile
        assert await gateway.reload("file")
        with pytest.raises(StaleConfig, match="read it again"):
            await gateway.change(edited, "admin", based_on)
        assert json.loads(path.read_text()) == document("/a", "/from-file")
        assert [route.name for route in gateway.table.routes] == ["/a", "/from-file"]
        # Made from the running generation, the same kind of edit goes through.
        edited = copy.deepcopy(gateway.config_document)
        edited["routers"].append(document("/from-admin")["routers"][0])
        await gateway.change(edited, "admin", gateway.generation)
        assert [route.name for route in gateway.table.routes] == ["/a", "/from-file", "/from-admin"]
        assert json.loads(path.read_text())["x-operator-note"] == "kept"
        assert json.loads((tmp_path / "config.json.bak").read_text()) == document("/a", "/from-file")

    asyncio.run(scenario())


def test_an_invalid_edit_changes_neither_the_file_nor_the_running_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document("/a")))
    gateway = gateway_on(path)

    async def scenario() -> None:
        await gateway.reload("startup")
        generation, before = gateway.generation, path.read_bytes()
        bad = document("/a", "/b")
        bad["routers"][1]["backends"][0]["port"] = 70000
        with pytest.raises(ConfigError) as failure:
            await gateway.change(bad, "admin", generation)
        assert any("routers[1].backends[0].port" in str(problem) for problem in failure.value.problems)
        assert path.read_bytes() == before and gateway.generation == generation

    asyncio.run(scenario())
