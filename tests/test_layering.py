"""One-way data flow: lower layers never import higher ones; spec and space import neither torch nor ray.

A strategy's declaration (`tlsearch/strategies/<name>/__init__.py`: its knobs and registration) and the
package that registers the built-in ones (`tlsearch/strategies/__init__.py`) belong to the spec layer:
specs name strategies, and are validated without torch. The rest of a strategy (`apply.py`, the shared
`base.py` and `formats.py`) is the strategies layer.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlsearch"
# spec -> space -> data/models -> strategies -> train -> audit (the data audit) -> results (files,
# report) -> tracking (W&B) -> final (test evaluation, model directory, ONNX export) -> search (Ray Tune
# wiring, finalize) -> cli
LAYERS = [
    *("spec", "space", "data", "models", "strategies", "train", "audit", "results", "tracking", "final"),
    "search",
    "cli",
    "testing",  # tiny real models and data for tests: may import anything, imported by nothing here
]
BASE = {"errors", "registry", "__init__", "__main__"}  # usable everywhere


def is_declaration(parts: list[str]) -> bool:
    """`tlsearch.strategies` or `tlsearch.strategies.<name>` where <name> is a strategy's package."""
    if parts[:2] != ["tlsearch", "strategies"]:
        return False
    return len(parts) == 2 or (
        len(parts) == 3 and (PACKAGE / "strategies" / parts[2] / "__init__.py").exists()
    )


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tlsearch" or len(parts) < 2:
        return None
    return "spec" if is_declaration(parts) else parts[1]


def layer_of_file(path: Path) -> str:
    parts = ["tlsearch", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts == ["tlsearch", "__init__"]:
        return "__init__"
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return layer_of(".".join(parts)) or parts[-1]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path: Path) -> None:
    own = layer_of_file(path)
    if own in BASE:
        return
    rank = LAYERS.index(own)
    for module in imports(path):
        target = layer_of(module)
        if target is None or target in BASE or target not in LAYERS:
            continue
        assert LAYERS.index(target) <= rank, (
            f"{path.name} ({own}) imports {module} ({target}): an upward import"
        )


def test_strategy_declarations_are_spec_level_and_the_rest_is_not() -> None:
    assert layer_of_file(PACKAGE / "strategies" / "__init__.py") == "spec"
    assert layer_of_file(PACKAGE / "strategies" / "lora" / "__init__.py") == "spec"
    assert layer_of_file(PACKAGE / "strategies" / "lora" / "apply.py") == "strategies"
    assert layer_of_file(PACKAGE / "strategies" / "base.py") == "strategies"


def test_spec_and_space_load_without_torch_or_ray() -> None:
    code = (
        "import sys; import tlsearch.spec, tlsearch.space, tlsearch.strategies; "
        "from tlsearch.spec.strategy import STRATEGIES; assert len(STRATEGIES) >= 4; "
        "heavy = ('torch', 'ray', 'timm', 'transformers', 'peft'); "
        "bad = [m for m in heavy if m in sys.modules]; print(bad); "
        "raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def module_name(path: Path) -> str:
    parts = ["tlsearch", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_of_the_package_is_used_by_the_package() -> None:
    """Code only benchmarks or tests use lives with them (or in tlsearch.testing, which exists for tests)."""
    sources = {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}
    referenced: set[str] = set()
    for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py")):
        if name == "tlsearch.testing":
            continue
        referenced |= imports(path)
        referenced |= set(re.findall(r"[\"'](tlsearch(?:\.\w+)+)[\"']", sources[name]))  # by name
    # Importing a module runs its packages' __init__ too.
    referenced |= {ref.rsplit(".", k)[0] for ref in referenced for k in range(1, ref.count(".") + 1)}
    entry_points = {"tlsearch", "tlsearch.__main__", "tlsearch.cli", "tlsearch.testing"}
    unused = sorted(m for m in sources if m not in entry_points and m not in referenced)
    assert not unused, f"imported by nothing in the package: {unused}"
