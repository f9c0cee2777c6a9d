"""Search ranges in a spec: one fixed value, a list of choices, or a `{low, high}` range.

head_lr: 0.001                      # fixed
rank: [4, 8, 16]                    # choices
backbone_lr: {low: 1e-5, high: 1e-3, log: true}
unfreeze_depth: {low: 1, high: 4}
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_serializer

from tlsearch.registry import suggest

Scalar = bool | int | float | str
Kind = Literal["float", "int", "str"]


class Strict(BaseModel):
    """A spec section: unknown keys rejected, frozen once validated; each field's docstring is its
    description (docs/spec.md is generated from them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Param(BaseModel):
    """A normalised search range. Exactly one of `choices` or (`low`, `high`) is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: tuple[Scalar, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @model_serializer
    def _compact(self) -> Any:
        """Dump in the shape a person writes (one value, a list, or {low, high[, log][, step]})."""
        if self.choices is not None:
            return self.choices[0] if len(self.choices) == 1 else list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    @classmethod
    def range(cls, low: float, high: float, *, log: bool = False) -> Param:
        return cls(low=low, high=high, log=log)

    @classmethod
    def of(cls, *choices: Scalar) -> Param:
        return cls(choices=tuple(choices))

    @property
    def is_range(self) -> bool:
        return self.choices is None

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def default(self, preferred: Scalar) -> Scalar:
        """`preferred` where the range admits it, else the nearest admissible value."""
        if self.contains(preferred):
            return preferred
        if self.choices is not None:
            return self.choices[0]
        assert self.low is not None and self.high is not None and isinstance(preferred, int | float)
        clipped = min(max(preferred, self.low), self.high)
        return int(clipped) if isinstance(self.low, int) else clipped

    def describe(self) -> str:
        if self.choices is not None:
            return str(list(self.choices)) if len(self.choices) > 1 else repr(self.choices[0])
        scale = ", log" if self.log else ""
        return f"[{self.low}, {self.high}{scale}]"


def _normalise(value: Any) -> Any:
    """Accept the three YAML shapes and turn them into Param's fields."""
    if isinstance(value, Param):
        return value
    if isinstance(value, list | tuple):
        return {"choices": list(value)}
    if isinstance(value, dict):
        return value
    return {"choices": [value]}


def _fmt(values: Any) -> str:
    return str(list(values)) if isinstance(values, tuple | list) else repr(values)


class Bounds:
    """Domain rules of one knob, checked on fixed values, choices and range ends alike."""

    def __init__(
        self,
        kind: Kind,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
        allowed: tuple[str, ...] | None = None,
    ):
        self.kind, self.ge, self.gt, self.le, self.lt, self.allowed = kind, ge, gt, le, lt, allowed

    def _rule(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f"≥ {self.ge}")
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.le is not None:
            parts.append(f"≤ {self.le}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        return " and ".join(parts)

    def _type_ok(self, v: Any) -> bool:
        if self.kind == "str":
            return isinstance(v, str)
        if isinstance(v, bool):
            return False
        if self.kind == "int":
            return isinstance(v, int)
        return isinstance(v, int | float) and math.isfinite(v)

    def _in_bounds(self, v: float) -> bool:
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )

    def __call__(self, p: Param) -> Param:
        noun = {"float": "numbers", "int": "integers", "str": "names"}[self.kind]
        rule = self._rule()
        if p.choices is not None:
            if p.low is not None or p.high is not None:
                raise ValueError("give either `choices` or `low`/`high`, not both")
            if not p.choices:
                raise ValueError("choices must not be empty")
            if len(set(p.choices)) != len(p.choices):
                raise ValueError(f"choices must be distinct, but got {_fmt(p.choices)}")
            if self.kind == "str":
                bad = [c for c in p.choices if not isinstance(c, str) or c not in (self.allowed or ())]
                if bad:
                    hint = suggest(str(bad[0]), self.allowed or ())
                    raise ValueError(
                        f"choices must be among {', '.join(self.allowed or ())}, but got "
                        f"{_fmt(p.choices)}.{hint}"
                    )
                return p
            if not all(self._type_ok(c) and self._in_bounds(c) for c in p.choices):  # type: ignore[arg-type]
                what = f"{noun} {rule}".strip()
                label = "value" if len(p.choices) == 1 else "choices"
                shown = _fmt(p.choices) if len(p.choices) > 1 else repr(p.choices[0])
                raise ValueError(f"{label} must be {what}, but got {shown}")
            return p
        if self.kind == "str":
            raise ValueError(f"give a name or a list of names among {', '.join(self.allowed or ())}")
        if p.low is None or p.high is None:
            raise ValueError("a range needs both `low` and `high` (or give `choices` / one value)")
        for end in ("low", "high"):
            v = getattr(p, end)
            if not self._type_ok(v):
                raise ValueError(f"`{end}` must be one of the {noun}, but got {v!r}")
            if not self._in_bounds(v):
                raise ValueError(f"`{end}` must be {rule}, but got {v!r}")
        if p.low > p.high:
            raise ValueError(f"`low <= high` must hold, but got (low={p.low}, high={p.high})")
        if p.log and p.low <= 0:
            raise ValueError(f"`low` must be > 0 for a log range, but got {p.low}")
        if p.step is not None:
            if p.log:
                raise ValueError("`step` cannot be combined with `log: true`")
            if not self._type_ok(p.step) or p.step <= 0:
                raise ValueError(f"`step` must be a positive {self.kind}, but got {p.step!r}")
        if self.kind == "int" and p.log and p.low < 1:
            raise ValueError(f"`low` must be ≥ 1 for an integer log range, but got {p.low}")
        return p


def knob(kind: Kind, **rules: Any) -> Any:
    """An annotated Param type for one knob: `rank: knob("int", ge=1) = Param.of(8)`."""
    return Annotated[Param, BeforeValidator(_normalise), AfterValidator(Bounds(kind, **rules))]
