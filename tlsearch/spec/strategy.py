"""What a strategy is to the spec, torch-free: its name, its knobs, their default search ranges.

A strategy's package (`tlsearch/strategies/<name>/__init__.py`) declares its knobs as a `Knobs`
class, one `Knob` per field, and a `Strategy` naming the module that implements it; the strategies
package registers it with one line. Everything else is derived from the knobs class:

- the spec's section `strategies.<name>` (every knob a search range: `Knobs.space`),
- the search space's dimensions and the seed configurations' values (`Knob.preferred`),
- a trial's typed values (`Knobs.model_validate`, in `tlsearch.space.TrialConfig`),
- the key reference in docs/spec.md.

The common knobs (`CommonKnobs`: batch size, weight decay, warm-up, the training loss) are a `Knobs`
class too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from tlsearch.registry import Registry
from tlsearch.spec import vocab
from tlsearch.spec.params import Kind, Param, Scalar, Strict, knob

COMMON = "common"  # the spec section and trial-config prefix of the knobs every strategy shares
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Knob:
    """One knob of a `Knobs` class (its field's `Annotated` metadata)."""

    default: Param  # the search range when the spec leaves the knob out
    # Tried first (the default seed configurations) and used where a seed configuration leaves the
    # knob out; clipped into the searched range when it lies outside.
    preferred: Scalar
    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allowed: tuple[str, ...] | None = None  # for names: the values a choice may take
    # An integer bounded by the backbone's block count: a default range is clipped to the model's
    # blocks, an explicit range beyond them is refused (before any trial starts).
    at_most_blocks: bool = False
    # Searched only where another knob of the same section takes one value (`("loss", "focal")`);
    # elsewhere the trial gets `preferred`, unsampled, so the sampler models only what matters.
    applies_when: tuple[str, str] | None = None

    def rules(self) -> dict[str, Any]:
        rules = {"ge": self.ge, "gt": self.gt, "le": self.le, "lt": self.lt, "allowed": self.allowed}
        return {k: v for k, v in rules.items() if v is not None}


def learning_rate(default: Param, preferred: float, doc: str) -> Knob:
    return Knob(default, preferred, doc, gt=0, le=10)


# Knobs several strategies share, with one meaning each.
HEAD_LR = learning_rate(Param.range(1e-4, 3e-2, log=True), 1e-3, "Learning rate of the new head.")
LAYER_DECAY = Knob(
    Param.range(0.5, 1.0),
    0.75,
    "Ratio of each block's learning rate to the one above it (1: one rate for the whole backbone).",
    gt=0,
    le=1,
)


def backbone_lr(default: Param) -> Knob:
    doc = "Learning rate of the top block and what sits above it (final norm, pooler)."
    return learning_rate(default, 5e-5, doc)


_KINDS: dict[type, Kind] = {float: "float", int: "int", str: "str"}


class Knobs(BaseModel):
    """One trial's values of a set of knobs (a strategy's own, or the common ones), typed. Each
    subclass gets `space`: the spec section that searches them (each knob a range, choices or one
    value, with the knob's domain rules and its default range)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    space: ClassVar[type[Strict]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields: dict[str, Any] = {}
        for name in cls.model_fields:
            spec = cls.knob(name)
            fields[name] = (knob(cls.kind(name), **spec.rules()), Field(spec.default, description=spec.doc))
            if spec.applies_when is not None:
                other, value = spec.applies_when
                if other not in fields or value not in (cls.knob(other).allowed or ()):
                    raise TypeError(
                        f"{cls.__name__}.{name}: applies_when names a choice of a knob declared "
                        f"before it, but got {spec.applies_when}"
                    )
        space_name = cls.__name__.removesuffix("Knobs") + "Space"
        cls.space = create_model(
            space_name, __base__=Strict, __doc__=cls.__doc__, __module__=cls.__module__, **fields
        )
        # Found again by pickle (a spec sent to a spawned process) as the attribute it is.
        cls.space.__qualname__ = f"{cls.__qualname__}.space"

    @classmethod
    def knob(cls, name: str) -> Knob:
        found = [meta for meta in cls.model_fields[name].metadata if isinstance(meta, Knob)]
        if len(found) != 1:
            raise TypeError(f"{cls.__name__}.{name} needs exactly one Knob(...) in its annotation")
        return found[0]

    @classmethod
    def kind(cls, name: str) -> Kind:
        annotation = cls.model_fields[name].annotation
        if annotation not in _KINDS:
            raise TypeError(f"{cls.__name__}.{name}: a knob is a float, an int or a str, not {annotation}")
        return _KINDS[annotation]


class CommonKnobs(Knobs):
    """Knobs every strategy shares (`strategies.common`)."""

    weight_decay: Annotated[
        float,
        Knob(
            Param.range(0.0, 0.1),
            0.01,
            "AdamW's decoupled weight decay (none on biases and norms).",
            ge=0,
            le=1,
        ),
    ]
    warmup_fraction: Annotated[
        float,
        Knob(
            Param.of(0.1),
            0.1,
            "Share of the steps spent warming the learning rates up (then cosine).",
            ge=0,
            lt=1,
        ),
    ]
    batch_size: Annotated[int, Knob(Param.of(16, 32), 16, "Training batch size per worker.", ge=1, le=65536)]
    # The training loss. Defaults keep plain cross-entropy, and a trial config written before these
    # knobs existed reads as what it trained with. Validation metrics stay plain cross-entropy.
    class_weighting: Annotated[
        str,
        Knob(
            Param.of("none"),
            "none",
            "Class weights in the training loss: `none`, or `balanced` (each class weighted by "
            "rows / (classes × its rows), scikit-learn's rule).",
            allowed=vocab.CLASS_WEIGHTINGS,
        ),
    ] = "none"
    label_smoothing: Annotated[
        float,
        Knob(
            Param.of(0.0),
            0.0,
            "Share of each training target spread evenly over the classes (PyTorch's `label_smoothing`).",
            ge=0,
            lt=1,
        ),
    ] = 0.0
    loss: Annotated[
        str,
        Knob(
            Param.of("cross_entropy"),
            "cross_entropy",
            "`cross_entropy`, or `focal` (Lin et al. 2017: each row's cross-entropy times "
            "(1 − p_true) ** `focal_gamma`, so easy rows count less).",
            allowed=vocab.LOSSES,
        ),
    ] = "cross_entropy"
    focal_gamma: Annotated[
        float,
        Knob(
            Param.of(2.0),
            2.0,
            "Focal loss's exponent (0 is cross-entropy); searched only in trials whose `loss` is `focal`.",
            ge=0,
            le=10,
            applies_when=("loss", "focal"),
        ),
    ] = 2.0
    # Images only; validation and test stay deterministic. Either one makes a frozen prefix's output
    # differ every epoch, so the trial trains without the feature cache.
    augmentation: Annotated[
        str,
        Knob(
            Param.of("none"),
            "none",
            "Training-image augmentation (timm's training transforms): `none`; `light` (a random resized "
            "crop of 50–100% of the image, horizontal flips); `randaugment` (the same, plus timm's "
            "RandAugment `rand-m9-mstd0.5-inc1`). Images only; not for digits or text in images, which "
            "flips change.",
            allowed=vocab.AUGMENTATIONS,
        ),
    ] = "none"
    mixup: Annotated[
        float,
        Knob(
            Param.of(0.0),
            0.0,
            "Mixup / CutMix alpha (timm's `Mixup`, half the batches each; 0: off): each training batch "
            "mixed with itself reversed, with soft targets. Images only; not with focal loss or class "
            "weights.",
            ge=0,
            le=10,
        ),
    ] = 0.0


@dataclass(frozen=True)
class Strategy:
    """A transfer strategy as the spec, the search space and the docs know it."""

    name: str
    knobs: type[Knobs]
    # The module that applies it to a model (it imports torch): `apply(loaded, knobs, common) ->
    # Prepared`, and optionally `check(probe, dims)`, called on the architecture before a search starts.
    implementation: str
    summary: str  # what trains, in a line
    # Its frozen prefix is deterministic, so its output may be computed once and reused
    # (`training.feature_cache`; the strategy's `Prepared.feature_boundary` says where it ends, or
    # its head probe reads the cache: lp_ft).
    feature_cache: bool = False
    # Searched when a spec has no `strategies` section.
    default: bool = False
    # Why its trials cannot train sharded (FSDP2), or None when they can.
    not_sharded_because: str | None = None
    # Why its trials cannot read streamed data (`data.loader: ray_data`), or None when they can.
    not_streamed_because: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name == COMMON:
            raise ValueError(
                f"a strategy's name is lower-case letters, digits and `_` (and not `{COMMON}`), "
                f"but got {self.name!r}"
            )


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    """Makes a strategy known to specs, search spaces and trials (a name registered twice raises)."""
    return STRATEGIES.register(strategy.name)(strategy)
