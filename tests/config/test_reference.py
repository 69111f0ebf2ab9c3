"""docs/configuration.md is generated from the config models (kairos/config/reference.py) and
committed; these tests are the CI check that it is current, complete and plain Markdown."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kairos.config.reference import COMMAND, render
from tests.config.test_schema import SCHEMAS, config_models

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    expected = render()
    committed = DOC.read_text("utf-8") if DOC.exists() else ""
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "docs/configuration.md", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(f"docs/configuration.md is not current; regenerate it with `{COMMAND}`\n{shown}")


def test_the_generator_command_prints_the_reference() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "kairos.config.reference"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == render()


def test_every_section_and_key_is_in_the_reference() -> None:
    text = render()
    for model in config_models():
        assert f"Model `{model.__name__}`" in text or model.__name__ == "GatewayConfig", model.__name__
    for name, schema in SCHEMAS.items():
        forms = schema.get("anyOf", [schema])
        keys = next(form["properties"] for form in forms if "properties" in form)
        for key in keys:
            assert re.search(rf"^\| `{re.escape(key)}`", text, re.MULTILINE), f"{name}.{key}"
    # aliases are listed beside their key
    assert "| `retry` (also `retry_config`) |" in text
    assert "| `initial_backoff_ms` (also `base_delay_ms`) |" in text
    assert "| `endpoint` (also `path`) |" in text
    assert "| `requests_per_minute` |" in text and "| `jwt_secret` |" in text


def test_the_reference_is_plain_markdown_with_working_anchors() -> None:
    markdown = pytest.importorskip("markdown")
    text = render()
    outside_code = re.sub(r"`[^`\n]*`", "", text)
    assert not re.search(r"<[A-Za-z/!?]", outside_code), "raw HTML (or a `<` outside a code span)"
    html = markdown.markdown(text, extensions=["tables", "toc"])  # what mkdocs renders it with
    ids = set(re.findall(r' id="([^"]+)"', html))
    links = set(re.findall(r' href="#([^"]+)"', html))
    assert links and links <= ids, sorted(links - ids)
    assert html.count("<table>") == len(SCHEMAS)  # one table per section
    assert html.count("<h2") == len(SCHEMAS)
