"""kairos.config is the bottom layer: it imports nothing of Kairos above it, and its own modules
import each other one way only (every import counts, also one under TYPE_CHECKING or in a function)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import kairos.config

PACKAGE = Path(kairos.config.__file__).parent
# Nothing outside kairos.config may be imported (the path-template parser lives in
# kairos/config/path_template.py: route paths are config syntax).
ALLOWED_OUTSIDE: set[str] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] == "kairos"}


MODULES = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, modules: set[str]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def test_config_imports_nothing_of_kairos_above_it() -> None:
    outside = {
        (module, name)
        for module, names in MODULES.items()
        for name in names
        if not _within(name, {"kairos.config", *ALLOWED_OUTSIDE})
    }
    assert outside == set()


def test_the_config_modules_import_each_other_one_way() -> None:
    graph = {
        module: {name for name in names if name in MODULES and name != module}
        for module, names in MODULES.items()
    }
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {' -> '.join(cycle.args[1])}") from None
    assert "kairos.config.model" not in graph["kairos.config.ai"]
    assert "kairos.config.transform.rules" in graph["kairos.config.transform"]
