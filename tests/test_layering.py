"""Imports point one way: gateways -> broker -> actors (checked with `ast`, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["actors", "broker", "gateways"]  # each may import only the ones before it
THIRD_PARTY_ALLOWED = {
    "actors": {"trio"},
    "broker": {"trio", "orjson", "cbor2", "prometheus_client"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    forbidden = set(LAYERS[LAYERS.index(layer) + 1:])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & forbidden)
        for path in (ROOT / layer).rglob("*.py")
        if imported_modules(path) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize("layer", ["actors", "broker"])
def test_inner_layers_use_no_io_framework(layer: str) -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    allowed = THIRD_PARTY_ALLOWED[layer] | stdlib | set(LAYERS[: LAYERS.index(layer) + 1])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) - allowed)
        for path in (ROOT / layer).rglob("*.py")
        if imported_modules(path) - allowed
    }
    assert offenders == {}


def test_the_code_is_ruff_clean() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
