"""Spec validation: good specs load with defaults filled; bad ones list every problem with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlsearch.errors import SpecError
from tlsearch.spec import Param, load_spec, validate_spec
from tlsearch.spec.model import Spec
from tlsearch.spec.strategy import STRATEGIES, CommonKnobs

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))

MINIMAL = {
    "name": "demo",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return info.value.problems


def changed(changes: dict) -> dict:
    """MINIMAL with `section__key` or top-level keys replaced."""
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for key, value in changes.items():
        if "__" in key:
            section, leaf = key.split("__")
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    return data


def with_(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.strategies.enabled()
    assert path.read_text().startswith("#"), "each shipped spec opens with a comment saying what it is for"
    assert "tlsearch run" in path.read_text().split("\n\n")[0] or "tlsearch run" in path.read_text()[:1200]


def test_minimal_spec_gets_all_four_strategies_and_defaults() -> None:
    spec = validate_spec(MINIMAL)
    assert spec.strategies.enabled() == ["linear_probe", "partial", "full", "lora"]
    assert spec.storage == "./runs" and spec.seed == 0
    assert spec.search.resolved_mode == "max"
    assert spec.strategies.lora.rank == Param.of(4, 8, 16)  # type: ignore[union-attr]


def test_leaving_out_a_strategy_removes_it_and_empty_map_uses_defaults() -> None:
    spec = validate_spec(with_(strategies={"lora": {}, "full": None}))
    assert spec.strategies.enabled() == ["full", "lora"]
    assert spec.strategies.space("lora") == STRATEGIES.get("lora").knobs.space()


def test_three_shapes_of_a_knob() -> None:
    spec = validate_spec(
        with_(
            strategies={"lora": {"rank": 8, "alpha": [8, 16], "lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
        )
    )
    lora = spec.strategies.lora
    assert lora.rank == Param(choices=(8,))  # type: ignore[union-attr]
    assert lora.alpha.choices == (8, 16)  # type: ignore[union-attr]
    assert (lora.lr.low, lora.lr.high, lora.lr.log) == (1e-4, 1e-2, True)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"strategies": {"lora": {"rank": [0, 8]}}}, "strategies.lora.rank", "choices must be integers ≥ 1"),
        (
            {"strategies": {"lora": {"rank": {"low": 0, "high": 8}}}},
            "strategies.lora.rank",
            "`low` must be ≥ 1 and ≤ 1024, but got 0",
        ),
        (
            {"strategies": {"full": {"backbone_lr": {"low": 1e-3, "high": 1e-5}}}},
            "strategies.full.backbone_lr",
            "`low <= high` must hold, but got (low=0.001, high=1e-05)",
        ),
        (
            {"strategies": {"full": {"layer_decay": 1.5}}},
            "strategies.full.layer_decay",
            "value must be numbers",
        ),
        (
            {"strategies": {"lora": {"targets": ["attn"]}}},
            "strategies.lora.targets",
            "Did you mean `attention`?",
        ),
        (
            {"strategies": {"partial": {"unfreez_depth": 2}}},
            "strategies.partial.unfreez_depth",
            "Did you mean `unfreeze_depth`?",
        ),
        ({"strategies": {"adapter": {}}}, "strategies.adapter", "unknown key `adapter`"),
        ({"search__metric": "val_acc"}, "search.metric", "Did you mean `val_accuracy`?"),
        ({"training__feature_cache": "on"}, "training.feature_cache", "'auto' or 'off'"),
        ({"search__num_samples": 0}, "search.num_samples", "must be greater than or equal to 1, but got 0"),
        ({"modle": {}}, "modle", "Did you mean `model`?"),
        ({"name": "a b"}, "name", "it names a directory"),
        ({"strategies": {"common": {"warmup_fraction": 1.0}}}, "strategies.common.warmup_fraction", "< 1"),
        (
            {"strategies": {"full": {"head_lr": {"low": 0.0, "high": 1e-2, "log": True}}}},
            "strategies.full.head_lr",
            "`low` must be > 0",
        ),
        ({"training__compile": "sometimes"}, "training.compile", "must be a valid boolean"),
        (
            {"training__channels_last": "always"},
            "training.channels_last",
            "must be 'auto' or a valid boolean, unable to interpret input, but got 'always'",
        ),
    ],
)
def test_field_errors_name_the_path_and_the_fix(changes: dict, path: str, message: str) -> None:
    found = problems(changed(changes))
    assert any(p.startswith(path + ":") and message in p for p in found), found


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"model__source": "timm"}, "model.source", "text-classification needs `source: hf`"),
        ({"model__name": "builtin:minilm"}, "model.name", "unknown builtin model"),
        ({"data": {"builtin": "bbc-news", "train": "x.parquet"}}, "data.train", "not both"),
        ({"data": {"train": "x.parquet"}}, "data.validation", "required"),
        (
            {"data": {"train": "x.json", "validation": "v.csv", "text_column": "t"}},
            "data.train",
            ".parquet or .csv",
        ),
        ({"data": {"builtin": "mnist-5k"}}, "data.builtin", "is for image-classification"),
        (
            {"resources": {"workers_per_trial": 2, "gpus_per_worker": 0.5}},
            "resources.gpus_per_worker",
            "fractional GPUs need `workers_per_trial: 1`",
        ),
        (
            {"resources": {"trial_driver_resources": {"trial_driver": 0.01}}},
            "resources.trial_driver_resources",
            "applies to multi-worker trials only",
        ),
        (
            {"resources": {"workers_per_trial": 2, "trial_driver_resources": {"CPU": 1}}},
            "resources.trial_driver_resources.CPU",
            "only custom resources",
        ),
        (
            {"resources": {"workers_per_trial": 2, "trial_driver_resources": {"stable": 0}}},
            "resources.trial_driver_resources.stable",
            "must be > 0, but got 0",
        ),
        (
            {"resources": {"parallelism": "fsdp"}},
            "resources.parallelism",
            "`fsdp` shards a trial's model over its workers, but workers_per_trial is 1",
        ),
        (
            {"resources": {"workers_per_trial": 2, "parallelism": "ddp", "fsdp": {"cpu_offload": True}}},
            "resources.fsdp",
            "applies to sharded trials only",
        ),
        (
            {
                "resources": {"workers_per_trial": 2, "parallelism": "fsdp"},
                "strategies": {"full": {}, "gradual": {}},
            },
            "strategies.gradual",
            "cannot train sharded (it unfreezes blocks mid-trial",
        ),
        ({"checkpoint_storage": "s4://bucket/x"}, "checkpoint_storage", "Did you mean `s3`?"),
        ({"search": {"metric": "val_loss", "mode": "max"}}, "search.mode", "minimised"),
        (
            {"search": {"max_epochs": 2, "scheduler": {"grace_period": 3}}},
            "search.scheduler.grace_period",
            "≤ search.max_epochs",
        ),
        ({"strategies": {"common": {}}}, "strategies", "enable at least one"),
        (
            {"search": {"seed_configs": [{"strategy": "lora", "rank": 3}]}},
            "search.seed_configs[0].rank",
            "must lie in the searched range [4, 8, 16]",
        ),
        (
            {"search": {"seed_configs": [{"strategy": "lora", "ranks": 8}]}},
            "search.seed_configs[0].ranks",
            "Did you mean `rank`?",
        ),
        (
            {
                "model__max_length": 64,
                "model__task": "image-classification",
                "model__source": "timm",
                "model__name": "test_vit",
                "data": {"builtin": "mnist-5k"},
            },
            "model.max_length",
            "text models only",
        ),
        (
            {"training__channels_last": True},
            "training.channels_last",
            "applies to image models only; remove it or set it to auto",
        ),
        (
            {"strategies": {"full": {}, "lora": {}}, "training": {"feature_cache": "off"}},
            "training.feature_cache",
            "applies to linear_probe, partial, lp_ft trials only, and this search runs none of them",
        ),
        (
            {"audit": {"label_issues": False, "drop": ["label_issues"]}},
            "audit.drop",
            "`audit.label_issues` is false",
        ),
        ({"audit": {"drop": ["duplicates"]}}, "audit.drop", "exact_duplicates_across"),
        (
            {"model__trust_remote_code": True},
            "model.trust_remote_code",
            "builtin:all-minilm-l6-v2 runs none: remove it",
        ),
        (
            {
                "model": {"source": "timm", "name": "test_vit", "task": "image-classification"},
                "model__trust_remote_code": True,
                "data": {"builtin": "mnist-5k"},
            },
            "model.trust_remote_code",
            "a timm model runs none: remove it",
        ),
    ],
)
def test_cross_field_errors(changes: dict, path: str, message: str) -> None:
    found = problems(changed(changes))
    assert any(p.startswith(path) and message in p for p in found), found


def test_remote_code_is_off_unless_the_spec_says_so() -> None:
    assert validate_spec(MINIMAL).model.trust_remote_code is False
    hub_model = {"source": "hf", "name": "org/shipped-code", "task": "text-classification"}
    assert validate_spec(changed({"model": {**hub_model, "trust_remote_code": True}})).model.trust_remote_code


def test_image_models_load_through_timm_or_hugging_face() -> None:
    for source, name in (("timm", "test_vit"), ("hf", "/models/my-vit")):
        model = {"source": source, "name": name, "task": "image-classification", "image_size": 224}
        spec = validate_spec(changed({"model": model, "data": {"builtin": "mnist-5k"}}))
        assert spec.model.source == source and spec.model.task == "image-classification"
    # Text still needs Hugging Face, and a timm checkpoint file's architecture still needs timm.
    hf_image = {"source": "hf", "name": "/models/my-vit", "task": "image-classification"}
    found = problems(changed({"model": {**hf_image, "architecture": "vit_small_patch16_224"}}))
    assert any(p.startswith("model.architecture") and "timm checkpoint files only" in p for p in found), found


def test_training_speed_knobs_default_off_and_accept_their_values() -> None:
    spec = validate_spec(MINIMAL)
    assert spec.training.compile is False and spec.training.channels_last == "auto"
    image = {
        "model": {"source": "timm", "name": "test_vit", "task": "image-classification"},
        "data": {"builtin": "mnist-5k"},
    }
    for value in (True, False, "auto"):
        spec = validate_spec(changed({**image, "training": {"compile": True, "channels_last": value}}))
        assert spec.training.compile is True and spec.training.channels_last == value
    assert validate_spec(with_(training__channels_last=False)).training.channels_last is False


def test_all_field_errors_are_reported_at_once() -> None:
    data = with_(
        strategies={"lora": {"rank": [0], "dropout": 2.0}}, search={"num_samples": 0, "metric": "acc"}
    )
    data["extra"] = 1
    found = problems(data)
    for path in (
        "strategies.lora.rank",
        "strategies.lora.dropout",
        "search.num_samples",
        "search.metric",
        "extra",
    ):
        assert any(p.startswith(path) for p in found), (path, found)


def test_file_errors_carry_line_numbers_and_overrides_are_marked(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_(strategies={"lora": {"rank": [0, 8]}}), sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_spec(path, ["search.num_samples=-1"])
    text = str(info.value)
    assert str(path) in text
    assert "strategies.lora.rank (line " in text
    assert "search.num_samples (from --set)" in text


def test_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    spec = load_spec(
        path,
        [
            "search.num_samples=7",
            "strategies.lora.rank=[2, 4]",
            "resources.use_gpu=false",
            "name=other",
            "search.scheduler.type=fifo",
        ],
    )
    assert spec.search.num_samples == 7
    assert spec.strategies.lora.rank.choices == (2, 4)  # type: ignore[union-attr]
    assert spec.resources.use_gpu is False and spec.name == "other"
    assert spec.search.scheduler.type == "fifo"
    with pytest.raises(SpecError, match=r"expected KEY\.PATH=VALUE"):
        load_spec(path, ["search.num_samples"])
    with pytest.raises(
        SpecError, match=r"`name` is 'demo', a value with no keys below it: set it whole \(--set name=VALUE\)"
    ):
        load_spec(path, ["name.x=1"])


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_dump_round_trips_in_the_shapes_people_write() -> None:
    spec = validate_spec(
        with_(strategies={"lora": {"rank": 8}, "partial": {"unfreeze_depth": {"low": 1, "high": 3}}})
    )
    dumped = spec.model_dump(mode="json")
    assert dumped["strategies"]["lora"]["rank"] == 8
    assert dumped["strategies"]["partial"]["unfreeze_depth"] == {"low": 1, "high": 3}
    assert validate_spec(dumped) == spec


def test_a_spec_pickles_with_the_standard_pickle() -> None:
    """Sent to a spawned process (multiprocessing pickles by reference): every strategy's search space,
    derived from its knobs, is found again by its module and qualified name."""
    import pickle

    spec = validate_spec(with_(strategies={"lora": {"rank": 8}, "linear_probe": {}}))
    assert pickle.loads(pickle.dumps(spec)) == spec
    for name in STRATEGIES.names():
        space = STRATEGIES.get(name).knobs.space
        assert pickle.loads(pickle.dumps(space)) is space


def test_every_knob_has_a_kind_a_doc_and_a_preferred_value_inside_its_default_range() -> None:
    for knobs in [*(STRATEGIES.get(name).knobs for name in STRATEGIES), CommonKnobs]:
        for name in knobs.model_fields:
            knob = knobs.knob(name)
            assert knobs.kind(name) in ("float", "int", "str")
            assert knob.doc and knob.default.contains(knob.preferred), f"{knobs.__name__}.{name}"
            knobs.space(**{name: knob.default})  # the default range obeys the knob's own rules


def test_spec_model_is_the_public_type() -> None:
    assert isinstance(validate_spec(MINIMAL), Spec)


def test_feature_cache_defaults_to_auto_and_can_be_turned_off() -> None:
    assert validate_spec(MINIMAL).training.feature_cache == "auto"
    assert validate_spec(changed({"training__feature_cache": "off"})).training.feature_cache == "off"
    # Explicit and meaningful: a search with a cacheable strategy.
    lp_only = changed({"strategies": {"linear_probe": {}}, "training": {"feature_cache": "auto"}})
    assert validate_spec(lp_only).training.feature_cache == "auto"


def test_asha_counts_device_seconds_with_its_own_grace_period_and_top_rung() -> None:
    spec = validate_spec(
        with_(search={"scheduler": {"time_attr": "device_s", "grace_period_s": 60, "max_t_s": 600}})
    )
    assert (spec.search.scheduler.time_attr, spec.search.scheduler.grace_period_s) == ("device_s", 60)
    assert validate_spec(MINIMAL).search.scheduler.time_attr == "epoch"


@pytest.mark.parametrize(
    ("scheduler", "path", "message"),
    [
        ({"time_attr": "device_s"}, "search.scheduler.grace_period_s", "required with `time_attr: device_s`"),
        ({"time_attr": "device_s", "grace_period_s": 5}, "search.scheduler.max_t_s", "required"),
        ({"grace_period_s": 10}, "search.scheduler.grace_period_s", "applies to `time_attr: device_s` only"),
        (
            {"time_attr": "device_s", "grace_period": 2, "grace_period_s": 5, "max_t_s": 50},
            "search.scheduler.grace_period",
            "give `grace_period_s` (device-seconds) instead",
        ),
        (
            {"time_attr": "device_s", "grace_period_s": 100, "max_t_s": 50},
            "search.scheduler.grace_period_s",
            "must be ≤ max_t_s (50), but got 100",
        ),
        ({"type": "fifo", "time_attr": "device_s"}, "search.scheduler.time_attr", "`type: asha` only"),
        ({"time_attr": "seconds"}, "search.scheduler.time_attr", "'epoch' or 'device_s'"),
        (
            {"time_attr": "device_s", "grace_period_s": 0, "max_t_s": 5},
            "search.scheduler.grace_period_s",
            "must be greater than 0, but got 0",
        ),
    ],
)
def test_scheduler_time_attr_errors(scheduler: dict, path: str, message: str) -> None:
    found = problems(with_(search={"scheduler": scheduler}))
    assert any(p.startswith(path + ":") and message in p for p in found), found


IMAGE = {
    "name": "img",
    "model": {"source": "timm", "name": "test_vit", "task": "image-classification", "pretrained": False},
    "data": {"train": "a.parquet", "validation": "b.parquet", "image_column": "image"},
}


FOLDERS = {**IMAGE, "data": {"train": "images/train", "validation": "images/val/", "test": "images/t.v2/"}}
MIXED = {**IMAGE, "data": {"train": "a.parquet", "validation": "images/val", "image_column": "img"}}


def test_image_folder_splits_and_their_column_names() -> None:
    from tlsearch.spec.model import split_form

    assert [split_form(p) for p in ("a.parquet", "b.PQ", "c.csv", "d", "e/", "f.v2/", "g.v2", "h.json")] == [
        *("table", "table", "table", "folder", "folder", "folder", None, None)
    ]
    folders = validate_spec(FOLDERS)
    assert folders.data.folder_splits() == ["train", "validation", "test"] and folders.data.only_folders()
    assert validate_spec(MIXED).data.folder_splits() == ["validation"]
    image = IMAGE["model"]
    text = {"source": "hf", "name": "m", "task": "text-classification"}
    cases = [
        # every split a folder: no column to name
        ({**FOLDERS["data"], "image_column": "image"}, image, "data.image_column", "remove it"),
        ({**FOLDERS["data"], "label_column": "y"}, image, "data.label_column", "class folders' names"),
        # mixed: the tables' image column is needed, and named for the folders too
        ({"train": "a.parquet", "validation": "v/"}, image, "data.image_column", "folders' rows take"),
        ({"train": "a.parquet", "validation": "imgs.v2"}, image, "data.validation", "end it with `/`"),
        ({"train": "t/", "validation": "v.csv", "text_column": "t"}, text, "data.train", "image-classific"),
        ({"train": "a.csv", "validation": "v.json", "text_column": "t"}, text, "data.validation", ".csv"),
    ]
    for data, model, path, message in cases:
        found = problems({**IMAGE, "model": model, "data": data})
        assert any(p.startswith(path + ":") and message in p for p in found), (data, found)


@pytest.mark.parametrize(
    "document",
    [
        MINIMAL,
        IMAGE,
        FOLDERS,
        MIXED,
        with_(search={"scheduler": {"time_attr": "device_s", "grace_period_s": 5, "max_t_s": 50}}),
        with_(search={"scheduler": {"type": "fifo"}}),
        with_(strategies={"full": {}, "lora": {}}),
        {**IMAGE, "training": {"channels_last": True, "compile": True}},
    ],
    ids=["text", "image", "folders", "mixed", "device_s", "fifo", "no-cacheable-strategy", "image-knobs"],
)
def test_complete_dump_validates_again(document: dict) -> None:
    """spec.resolved.yaml holds every default and `tlsearch resume` validates it again: no default
    written out may trip a check for knobs that do not apply (an image model's max_length, ...)."""
    spec = validate_spec(document)
    again = validate_spec(spec.dump_complete())
    assert again == spec
