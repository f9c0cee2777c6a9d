"""docs/spec.md, the reference of every spec key, is generated from the pydantic models and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_spec_reference_is_current_and_names_every_key() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate_spec.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = (ROOT / "docs" / "spec.md").read_text()
    from tlsearch.spec.model import Spec, StrategiesSpec
    from tlsearch.spec.params import Strict
    from tlsearch.spec.strategy import STRATEGIES

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            out.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, Strict):
                out += keys(field.annotation, f"{prefix}{name}.")
        return out

    for key in keys(Spec):
        assert f"| `{key}` |" in text, key
    for name in ("linear_probe", "partial", "full", "lora"):
        for knob in STRATEGIES.get(name).knobs.model_fields:
            assert f"| `strategies.{name}.{knob}` |" in text
    assert StrategiesSpec.__doc__ and "## `strategies`" in text
