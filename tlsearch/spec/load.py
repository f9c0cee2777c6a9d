"""Read a spec from YAML, apply `--set` overrides, validate, and report every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from tlsearch.errors import SpecError
from tlsearch.registry import suggest
from tlsearch.spec.model import Spec, StrategiesSpec, cross_checks


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Parse, override and validate one spec file. Raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"cannot read the spec: {exc.strerror}"], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [f"line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 text: save the spec as UTF-8"], source
        ) from None
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise SpecError([f"not valid YAML: {exc}"], source) from None
    twice = _repeated_keys(tree)
    if twice:
        raise SpecError(twice, source)
    lines = _line_numbers(tree)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(["the spec must be a mapping of keys (name, model, data, ...)"], source)
    data.pop("resolved", None)  # a run's spec.resolved.yaml is a spec too; its record block is not input
    problems = apply_overrides(data, overrides)
    if problems:
        raise SpecError(problems, source)
    return validate_spec(data, source=source, lines=lines, overridden=_override_paths(overrides))


def validate_spec(
    data: dict[str, Any],
    *,
    source: str | None = None,
    lines: dict[str, int] | None = None,
    overridden: set[str] | None = None,
) -> Spec:
    lines, overridden = lines or {}, overridden or set()

    def where(path: str) -> str:
        if any(path == o or path.startswith(o + ".") for o in overridden):
            return f"{path} (from --set)"
        # A --set below the key at fault (`rank.low` in a rank that is no range now): name it.
        below = sorted(o for o in overridden if o.startswith(path + "."))
        if below:
            return f"{path} (from --set {', '.join(below)})"
        line = lines.get(path)
        return f"{path} (line {line})" if line else path

    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([f"{where(p)}: {m}" for p, m in _explain(exc)], source) from None
    problems = cross_checks(spec)
    if problems:
        raise SpecError([f"{where(p)}: {m}" for p, m in problems], source)
    return spec


# --- overrides ------------------------------------------------------------------------------


def _override_paths(overrides: list[str] | tuple[str, ...]) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides if "=" in o}


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`search.num_samples=4`: values are parsed as YAML scalars (or flow lists/maps)."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. search.num_samples=4")
            continue
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                parent = ".".join(parts[: i + 1])
                # A knob's one value: its range goes in whole, as a flow mapping.
                numeric = isinstance(child, int | float) and not isinstance(child, bool)
                example = f"; a range as --set '{parent}={{low: ..., high: ...}}'" if numeric else ""
                problems.append(
                    f"--set {key}: `{parent}` is {child!r}, a value with no keys below it: set it whole "
                    f"(--set {parent}=VALUE{example})"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems


# --- error messages -------------------------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the keys at `loc` (for listing the allowed keys)."""
    cls: type[BaseModel] | None = Spec
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        if cls is StrategiesSpec:  # its keys are looked up in the strategies' registry
            cls = StrategiesSpec.section_model(part)
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        cls = _first_model(field.annotation)
    return cls


def _allowed_keys(owner: type[BaseModel] | None) -> list[str]:
    if owner is None:
        return []
    return StrategiesSpec.section_keys() if owner is StrategiesSpec else list(owner.model_fields)


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


UNION_TAGS = frozenset({"bool", "int", "float", "str", "none"})


def _explain(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        # Drop the union members' tags pydantic puts in the path (`literal['auto']`, `bool`, ...).
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p.startswith("function-") or p in UNION_TAGS))
        )
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(_model_at(loc[:-1]))
            msg = f"unknown key `{loc[-1]}`.{suggest(str(loc[-1]), allowed)}"
            if allowed:
                msg += f" Allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "string_pattern_mismatch" and loc == ("name",):
            msg = f"must be letters, digits, '.', '_' or '-' (it names a directory), but got {err['input']!r}"
        else:
            msg = msg.removeprefix("Value error, ").replace("Input should be", "must be")
            if kind != "value_error" and not isinstance(err.get("input"), dict):
                msg = f"{msg}, but got {err['input']!r}"
        out.append((_path(loc), msg))
    # One message per path: a union reports one failure per member ("must be 'auto' or a valid boolean").
    seen: dict[str, str] = {}
    for path, msg in out:
        if path not in seen:
            seen[path] = msg
        elif msg.startswith("must be ") and seen[path].startswith("must be "):
            first, _, got = seen[path].partition(", but got ")
            other = msg.removeprefix("must be ").partition(", but got ")[0]
            seen[path] = f"{first} or {other}" + (f", but got {got}" if got else "")
    return list(seen.items())


def _repeated_keys(node: yaml.Node | None, prefix: str = "") -> list[str]:
    """A key given twice in one mapping, with both lines (YAML would keep the last one silently)."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            line = key.start_mark.line + 1
            if key.value in seen:
                problems.append(
                    f"{path}: given twice (lines {seen[key.value]} and {line}): keep the one you mean"
                )
            seen.setdefault(key.value, line)
            problems += _repeated_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _repeated_keys(item, f"{prefix}[{i}]")
    return problems


def _line_numbers(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            lines[path] = key.start_mark.line + 1
            lines.update(_line_numbers(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            lines[path] = item.start_mark.line + 1
            lines.update(_line_numbers(item, path))
    return lines
