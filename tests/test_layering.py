"""One-way data flow: lower layers never import higher ones; spec and space import neither torch nor ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlsearch"
# spec -> space -> data/models -> strategies -> train -> results (files, report) -> tracking (W&B)
# -> search (Ray Tune wiring) -> cli
LAYERS = [
    *("spec", "space", "data", "models", "strategies", "train", "results", "tracking", "search", "cli"),
    "testing",  # tiny real models and data for tests: may import anything, imported by nothing here
]
BASE = {"errors", "registry", "__init__", "__main__"}  # usable everywhere


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tlsearch" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own in BASE:
        return
    rank = LAYERS.index(own)
    for module in imports(path):
        target = layer_of(module)
        if target is None or target in BASE:
            continue
        assert LAYERS.index(target) <= rank, (
            f"{path.name} ({own}) imports {module} ({target}): an upward import"
        )


def test_spec_and_space_load_without_torch_or_ray() -> None:
    code = (
        "import sys; import tlsearch.spec, tlsearch.space; "
        "bad = [m for m in ('torch', 'ray', 'timm', 'transformers') if m in sys.modules]; print(bad); "
        "raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
