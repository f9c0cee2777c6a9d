"""Writes docs/spec.md, the reference of every spec key, from the pydantic models themselves.

    .venv/bin/python docs/generate_spec.py           # rewrite docs/spec.md
    .venv/bin/python docs/generate_spec.py --check   # exit 1 if docs/spec.md is not current

Each key's meaning is its field's docstring in tlsearch/spec/model.py; a strategy's knobs come from
its `Knobs` class (tlsearch/strategies/<name>/__init__.py). tests/test_spec_reference.py runs `--check`.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import tlsearch.strategies  # noqa: F401  (the built-in strategies register themselves)
from tlsearch.spec.model import SeedConfig, Spec, StrategiesSpec
from tlsearch.spec.params import Param
from tlsearch.spec.strategy import COMMON, STRATEGIES, CommonKnobs, Knobs

OUT = Path(__file__).resolve().parent / "spec.md"
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
RULES = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}

HEADER = """# Spec reference

Every key of a spec, its type, its default and what it means; generated from the pydantic models by
`python docs/generate_spec.py` (a test checks that this file is current). Unknown keys are refused,
every problem is reported at once with its YAML path, and `spec.resolved.yaml` in a run directory
shows a spec with every default filled in. A knob (under `strategies`) takes one value, a list of
choices, or a range `{low, high, log: true, step: ...}`.
"""


def type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in SCALARS:
        return SCALARS[annotation]
    if origin is Literal:
        return " \\| ".join(f"`{a}`" if not isinstance(a, bool) else f"`{str(a).lower()}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}"
    if annotation is SeedConfig:
        return "seed configuration"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return str(annotation)


def rules(field: FieldInfo) -> str:
    found = []
    for meta in field.metadata:
        for name, sign in RULES.items():
            value = getattr(meta, name, None)
            if value is not None:
                found.append(f"{sign} {value:g}")
        if getattr(meta, "min_length", None):
            found.append(f"at least {meta.min_length} character")
        if getattr(meta, "pattern", None):
            found.append(f"matching `{meta.pattern}`")
    return f" ({', '.join(found)})" if found else ""


def default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default  # type: ignore[call-arg, misc]
    if isinstance(value, BaseModel):
        return "(below)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value not in ({}, ()) else "empty"


def doc(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def section(path: str, model: type[BaseModel]) -> list[str]:
    lines = [f"## `{path}`" if path else "## Top level", "", doc(model.__doc__), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        kind = type_name(field.annotation)
        meaning = doc(field.description)
        if kind == "section":
            nested.append((key, field.annotation))
            summary = doc(field.annotation.__doc__).split(": ", 1)[-1]  # type: ignore[union-attr]
            meaning = meaning or summary[:1].upper() + summary[1:]
        lines.append(f"| `{key}` | {kind}{rules(field)} | {default_of(field)} | {meaning} |")
    if model is StrategiesSpec:
        lines.append(
            "| `strategies.<name>` | section | see below | The search space of a strategy: "
            f"{', '.join(STRATEGIES)} (below), or one registered by your own code. |"
        )
    out = [*lines, ""]
    for key, child in nested:
        if child is StrategiesSpec:
            out += section(key, child)
            out += strategies()
        elif key != f"strategies.{COMMON}":
            out += section(key, child)
    return out


def describe(param: Param) -> str:
    return f"`{param.describe()}`"


def knobs_table(path: str, knobs: type[Knobs]) -> list[str]:
    lines = [
        "| knob | kind | default search range | preferred | domain | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name in knobs.model_fields:
        knob = knobs.knob(name)
        domain = ", ".join(f"{RULES[k]} {v:g}" for k, v in knob.rules().items() if k in RULES)
        if knob.allowed:
            domain = ", ".join(f"`{a}`" for a in knob.allowed)
        if knob.at_most_blocks:
            domain += ", ≤ the model's blocks"
        lines.append(
            f"| `{path}.{name}` | {knobs.kind(name)} | {describe(knob.default)} | `{knob.preferred}` "
            f"| {domain} | {doc(knob.doc)} |"
        )
    return lines


def strategies() -> list[str]:
    out = [
        f"### `strategies.{COMMON}`",
        "",
        doc(CommonKnobs.__doc__),
        "",
        *knobs_table(f"strategies.{COMMON}", CommonKnobs),
        "",
    ]
    for name in STRATEGIES:
        strategy = STRATEGIES.get(name)
        flags = []
        if strategy.default:
            flags.append("searched when a spec has no `strategies` section")
        if strategy.feature_cache:
            flags.append("its frozen prefix may be cached (`training.feature_cache`)")
        out += [
            f"### `strategies.{name}`",
            "",
            f"What trains: {strategy.summary}." + (f" ({'; '.join(flags)}.)" if flags else ""),
            "",
            *knobs_table(f"strategies.{name}", strategy.knobs),
            "",
        ]
    return out


def render() -> str:
    seed = doc(SeedConfig.__doc__)
    body = section("", Spec)
    return "\n".join([HEADER, *body, "## A seed configuration", "", seed, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/spec.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is not current: run `python docs/generate_spec.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
