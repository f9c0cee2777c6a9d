"""Bad input, as a new user meets it: one table of cases, each run through `cli.main(argv)` in this
process. Every case gets one clear message (what is wrong, where, how to fix it) and exit code 2, no
traceback, and fails before any trial starts and before Ray starts; no file that was there before
(the data, the spec, an existing run directory) changes, and nothing is left behind that would block
the corrected command."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tlsearch import cli
from tlsearch.testing import image_rows, image_spec, text_rows, text_spec, write_image_folder, write_parquet


@dataclass
class Setup:
    """A working directory with good data, a good spec beside it, and helpers to spoil either."""

    root: Path
    bert: Path

    @property
    def storage(self) -> Path:
        return self.root / "runs"

    def data(self) -> dict[str, Path]:
        return {
            "train": write_parquet(text_rows(30, seed=1), self.root / "train.parquet"),
            "validation": write_parquet(text_rows(12, seed=2), self.root / "validation.parquet"),
        }

    def spec(self, **sections: Any) -> dict[str, Any]:
        return text_spec(self.bert, self.data(), self.storage, **sections)

    def write(self, spec: dict[str, Any] | str | bytes, name: str = "spec.yaml") -> str:
        path = self.root / name
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return str(path)

    def spec_file(self, **sections: Any) -> str:
        return self.write(self.spec(**sections))

    def with_data(self, **splits: Path) -> str:
        spec = self.spec()
        spec["data"].update({split: str(path) for split, path in splits.items()})
        return self.write(spec)

    def table(self, name: str, rows: list[dict[str, Any]]) -> Path:
        path = self.root / name
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    def empty_table(self, name: str) -> Path:
        path = self.root / name
        pq.write_table(
            pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path
        )
        return path

    def image_spec_file(self, train_rows: list[dict[str, Any]] | None = None, **sections: Any) -> str:
        files = {
            "train": write_parquet(train_rows or image_rows(12, seed=1), self.root / "images.parquet"),
            "validation": write_parquet(image_rows(6, seed=2), self.root / "images_val.parquet"),
        }
        return self.write(image_spec(files, self.storage, **sections))

    def model_dir(self, name: str, weights: dict[str, bytes]) -> Path:
        """The tiny BERT's directory (config, tokenizer) with `weights` as its weight files instead."""
        directory = self.root / name
        directory.mkdir()
        for file in self.bert.iterdir():
            if file.is_file() and file.suffix != ".safetensors":
                (directory / file.name).write_bytes(file.read_bytes())
        for file_name, content in weights.items():
            (directory / file_name).write_bytes(content)
        return directory

    def not_a_run(self) -> str:
        directory = self.root / "not-a-run"
        directory.mkdir(exist_ok=True)
        (directory / "notes.txt").write_text("not a run directory\n")
        return str(directory)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Setup], list[str]]
    expect: tuple[str, ...]  # each in the message
    absent: tuple[str, ...] = ()  # none of these in it (a misleading suggestion)


def _latin1_comment(s: Setup) -> list[str]:
    text = yaml.safe_dump(s.spec())
    return ["validate", s.write(("# réglages de l'équipe\n" + text).encode("latin-1"))]


def _duplicate_key(s: Setup) -> list[str]:
    text = yaml.safe_dump(s.spec(), sort_keys=False).replace("search:\n", "search:\n  num_samples: 10\n", 1)
    return ["validate", s.write(text)]


def _existing_run(s: Setup) -> list[str]:
    run_dir = s.storage / "tiny-text"
    run_dir.mkdir(parents=True)
    (run_dir / "trials.parquet").write_bytes(b"an earlier search's results")
    return ["run", s.spec_file()]


def _null_labels(s: Setup) -> list[str]:
    rows = text_rows(30, seed=1)
    for i in (3, 7):
        rows[i]["label"] = None
    return ["run", s.with_data(train=s.table("nulls.parquet", rows))]


def _one_class(s: Setup) -> list[str]:
    rows = [r for r in text_rows(40, seed=1) if r["label"] == "sport"]
    return ["run", s.with_data(train=s.table("sport.parquet", rows))]


def _garbage_parquet(s: Setup) -> list[str]:
    (s.root / "garbage.parquet").write_bytes(b"\x00not parquet at all\xff" * 10)
    return ["validate", s.with_data(train=s.root / "garbage.parquet")]


def _undecodable_images(s: Setup) -> list[str]:
    rows = image_rows(12, seed=1)
    rows[4]["image"] = b"not an image"
    return ["run", s.image_spec_file(rows)]


def _folder_is_a_file(s: Setup) -> list[str]:
    (s.root / "images").write_text("a file, not a folder")
    spec = s.spec()
    spec["model"] = {
        "source": "timm",
        "name": "test_vit",
        "task": "image-classification",
        "pretrained": False,
    }
    write_image_folder(image_rows(6, seed=2), s.root / "val")
    spec["data"] = {"train": str(s.root / "images"), "validation": str(s.root / "val")}
    return ["validate", s.write(spec)]


def _storage_below_a_file(s: Setup) -> list[str]:
    (s.root / "a-file").write_text("storage cannot be created below a regular file")
    return ["run", s.write({**s.spec(), "storage": str(s.root / "a-file" / "runs")})]


def _pickled_bert(s: Setup) -> Path:
    """The tiny BERT with its weights as a pickled `pytorch_model.bin` (what transformers wrote before
    safetensors; transformers 5 writes safetensors only, so torch.save stands in)."""
    import io

    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(load_file(s.bert / "model.safetensors"), buffer)
    return s.model_dir("bert-bin", {"pytorch_model.bin": buffer.getvalue()})


def _timm_pickled_checkpoint(s: Setup) -> list[str]:
    import torch

    torch.save({"conv1.weight": torch.zeros(1)}, s.root / "resnet.pth")
    model = {"name": str(s.root / "resnet.pth"), "architecture": "test_resnet", "pretrained": True}
    return ["validate", s.image_spec_file(model=model)]


def _set_below_a_value(s: Setup) -> list[str]:
    spec = s.spec(strategies={"lora": {"rank": 8}})
    return ["validate", s.write(spec), "--set", "strategies.lora.rank.low=0"]


def _column_of(name: str, **columns: list[Any]) -> Callable[[Setup], list[str]]:
    """`validate` with a training file of these columns, typed as pyarrow infers them."""

    def argv(s: Setup) -> list[str]:
        pq.write_table(pa.table(columns), s.root / name)
        return ["validate", s.with_data(train=s.root / name)]

    return argv


def _set(*overrides: str) -> Callable[[Setup], list[str]]:
    def argv(s: Setup) -> list[str]:
        return ["validate", s.spec_file(), *(a for o in overrides for a in ("--set", o))]

    return argv


def _spec_change(path: str, value: Any) -> Callable[[Setup], list[str]]:
    """`validate` of the good spec with the value at the dotted `path` replaced."""

    def argv(s: Setup) -> list[str]:
        spec = s.spec()
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        return ["validate", s.write(spec)]

    return argv


CASES = [
    # The spec file itself
    Case("no-spec-file", lambda s: ["validate", str(s.root / "missing.yaml")], ("cannot read the spec",)),
    Case("binary-spec", lambda s: ["validate", s.write(b"\x89PNG\r\n\x1a\n\x00\x00")], ("not UTF-8",)),
    Case("latin-1-comment", _latin1_comment, ("line 1", "not UTF-8", "save the spec as UTF-8")),
    Case("malformed-yaml", lambda s: ["validate", s.write("name: [x\nmodel: {")], ("not valid YAML",)),
    Case("empty-file", lambda s: ["validate", s.write("")], ("name", "model")),
    Case("a-list", lambda s: ["validate", s.write("- name: x\n")], ("must be a mapping",)),
    Case("duplicate-key", _duplicate_key, ("search.num_samples", "given twice (lines")),
    Case("typo-top-level", _spec_change("storag", "./runs"), ("Did you mean `storage`?",)),
    Case(
        "far-from-any-key",
        _spec_change("experiment_tags", ["a"]),
        ("experiment_tags", "unknown key"),
        absent=("Did you mean",),
    ),
    Case("wrong-type", _spec_change("search.num_samples", "ten"), ("search.num_samples",)),
    Case("zero-samples", _spec_change("search.num_samples", 0), ("search.num_samples",)),
    Case(
        "rank-zero",
        _spec_change("strategies.lora.rank", {"low": 0, "high": 8}),
        ("strategies.lora.rank (line", "`low` must be ≥ 1"),
    ),
    Case(
        "inverted-range",
        _spec_change("strategies.full.head_lr", {"low": 1e-2, "high": 1e-4, "log": True}),
        ("strategies.full.head_lr",),
    ),
    Case("unknown-strategy", _spec_change("strategies.lroa", {}), ("Did you mean `lora`?",)),
    Case("unknown-source", _spec_change("model.source", "hff"), ("model.source",)),
    Case("unknown-metric", _spec_change("search.metric", "val_acc"), ("search.metric",)),
    Case(
        "unknown-builtin", lambda s: ["validate", s.write({**s.spec(), "data": {"builtin": "bbc"}})], ("bbc",)
    ),
    Case("lora-target-abbreviated", _spec_change("strategies.lora.targets", ["attn"]), ("`attention`",)),
    Case(
        "grace-over-epochs",
        _spec_change("search.scheduler", {"type": "asha", "grace_period": 9}),
        ("search.scheduler.grace_period", "max_epochs"),
    ),
    Case("set-unknown-path", _set("search.num_sample=3"), ("search.num_sample", "`num_samples`")),
    Case("set-no-equals", _set("search.num_samples"), ("KEY.PATH=VALUE",)),
    Case("set-bad-value", _set("search.num_samples=abc"), ("search.num_samples (from --set)",)),
    Case(
        "set-nested-bad-number",
        _set("strategies.full.head_lr.low=abc"),
        ("strategies.full.head_lr.low (from --set)", "valid number", "'abc'"),
    ),
    Case(
        "set-nested-unknown-choice",
        _set("search.scheduler.type=nope"),
        ("search.scheduler.type (from --set)", "'asha' or 'fifo'"),
    ),
    Case(
        "set-half-a-range",
        _set("strategies.lora.rank.low=0"),
        ("strategies.lora.rank (from --set strategies.lora.rank.low)", "both `low` and `high`"),
    ),
    Case(
        "set-below-a-value",
        _set_below_a_value,
        ("--set strategies.lora.rank.low", "`strategies.lora.rank` is 8", "set it whole"),
    ),
    Case(
        "set-below-a-scalar-default",
        _set("search.scheduler.grace_period.epochs=1"),
        ("search.scheduler.grace_period (from --set search.scheduler.grace_period.epochs)", "integer"),
    ),
    Case(
        "stream-a-csv",
        lambda s: ["validate", s.spec_file(data={"loader": "ray_data", "max_train_samples": 5})],
        ("data.max_train_samples", "data.loader: memory"),
    ),
    # The data, as `validate` and `run` read it before any trial
    Case(
        "train-missing", lambda s: ["validate", s.with_data(train=s.root / "nope.parquet")], ("nope.parquet",)
    ),
    Case("train-garbage", _garbage_parquet, ("cannot read", "garbage.parquet")),
    Case(
        "train-0-bytes",
        lambda s: ["validate", s.with_data(train=Path(s.write(b"", "zero.parquet")))],
        ("zero.parquet is empty (0 bytes)",),
    ),
    Case(
        "csv-0-bytes",
        lambda s: ["validate", s.with_data(validation=Path(s.write(b"", "zero.csv")))],
        ("zero.csv is empty (0 bytes)",),
    ),
    Case(
        "text-column-of-numbers",
        _column_of("ints.parquet", text=list(range(8)), label=["a", "b"] * 4),
        ("data.train", "ints.parquet", "column `text` holds int64 values, not texts", "astype(str)"),
    ),
    Case(
        "float-labels",
        _column_of("floats.parquet", text=["goal team"] * 8, label=[0.0, 1.0] * 4),
        ("data.train", "column `label` holds double values, not labels", "astype('Int64')"),
    ),
    Case(
        "no-text-column",
        lambda s: ["validate", s.with_data(train=s.table("cols.parquet", [{"body": "x", "label": "a"}] * 4))],
        ("has no column `text`", "its columns: body, label"),
    ),
    Case(
        "no-label-column",
        lambda s: ["validate", s.with_data(train=s.table("nolab.parquet", [{"text": "x", "y": "a"}] * 4))],
        ("has no column `label`",),
    ),
    Case("one-class", _one_class, ("data.train", "1 class(es)", "at least 2")),
    Case(
        "zero-rows",
        lambda s: ["validate", s.with_data(train=s.empty_table("empty.parquet"))],
        ("data.train", "no rows"),
    ),
    Case("null-labels", _null_labels, ("nulls.parquet", "2 rows have no label (rows 3, 7)", "audit.drop")),
    Case("undecodable-image", _undecodable_images, ("images.parquet", "cannot be decoded (rows 4)")),
    Case("folder-is-a-file", _folder_is_a_file, ("data.train", "is a file where an image folder")),
    Case(
        "text-from-a-directory",
        lambda s: ["validate", s.with_data(validation=s.root)],
        ("data.validation", "must be a .parquet or .csv file"),
    ),
    # The model
    Case(
        "hf-model-unknown-offline",
        lambda s: ["run", s.spec_file(model={"name": "no-such-org/no-such-model"})],
        ("no-such-org/no-such-model", "not a local directory"),
    ),
    Case(
        "hf-model-path-missing",
        lambda s: ["run", s.spec_file(model={"name": str(s.root / "no-model-dir")})],
        ("no-model-dir", "not a local directory"),
    ),
    Case(
        "hf-weights-pickled",
        lambda s: ["validate", s.spec_file(model={"name": str(_pickled_bert(s))})],
        ("model.name", "pytorch_model.bin", "pickled torch file", "safe_serialization=True"),
    ),
    Case(
        "hf-weights-pickled-run",
        lambda s: ["run", s.spec_file(model={"name": str(_pickled_bert(s))})],
        ("model.name", "pytorch_model.bin", "safe_serialization=True"),
    ),
    Case(
        "hf-weights-garbage",
        lambda s: [
            "run",
            s.spec_file(
                model={"name": str(s.model_dir("bert-bad", {"model.safetensors": b"\x00junk" * 40}))}
            ),
        ],
        ("bert-bad/model.safetensors", "not a readable safetensors file"),
    ),
    Case(
        "hf-no-weights",
        lambda s: ["validate", s.spec_file(model={"name": str(s.model_dir("bert-none", {}))})],
        ("model.name", "no weights", "model.pretrained: false"),
    ),
    Case(
        "timm-checkpoint-pickled",
        _timm_pickled_checkpoint,
        ("model.name", "resnet.pth", "pickled torch file", "safetensors.torch.save_file"),
    ),
    Case(
        "max-length-over-positions",
        lambda s: ["validate", s.spec_file(model={"max_length": 512})],
        ("model.max_length is 512", "at most 64 tokens", "64 or less"),
    ),
    Case(
        "max-length-over-positions-run",
        lambda s: ["run", s.spec_file(model={"max_length": 512})],
        ("model.max_length is 512", "at most 64 tokens"),
    ),
    Case(
        "lora-matches-nothing",
        lambda s: [
            "run",
            s.image_spec_file(model={"name": "test_efficientnet"}, strategies={"lora": {}}),
        ],
        ("strategies.lora.targets", "`attention` matches no module", "partial or full fine-tuning"),
    ),
    Case(
        "lora-attention-on-an-mlp",
        lambda s: [
            "run",
            s.image_spec_file(model={"name": "mixer_s32_224"}, strategies={"lora": {"targets": "attention"}}),
        ],
        ("strategies.lora.targets", "blocks.0.mlp_tokens.fc1", "(attention_mlp, all_linear)"),
    ),
    Case(
        "timm-unknown-name",
        lambda s: ["run", s.image_spec_file(model={"name": "resnet5o"})],
        ("resnet5o",),
    ),
    # Run directories, storage and tracking
    Case("existing-run", _existing_run, ("already exists", "tlsearch resume")),
    Case("storage-below-a-file", _storage_below_a_file, ("cannot create the run directory", "storage")),
    Case(
        "wandb-online-without-key",
        lambda s: ["run", s.spec_file(tracking={"wandb": {"mode": "online"}})],
        ("no API key", "wandb login", "offline"),
    ),
    Case("resume-not-a-run", lambda s: ["resume", s.not_a_run()], ("not-a-run",)),
    Case("report-not-a-run", lambda s: ["report", s.not_a_run()], ("not-a-run",)),
    Case("finalize-not-a-run", lambda s: ["finalize", s.not_a_run()], ("not-a-run",)),
    Case("export-not-a-run", lambda s: ["export", s.not_a_run()], ("not-a-run",)),
    Case(
        "predict-not-a-run",
        lambda s: ["predict", s.not_a_run(), "--split", "test", "--output", str(s.root / "p.parquet")],
        ("not-a-run",),
    ),
    Case("resume-missing-dir", lambda s: ["resume", str(s.root / "gone")], ("gone",)),
    Case(
        "audit-missing-data",
        lambda s: ["audit", s.with_data(validation=s.root / "absent.parquet")],
        ("absent.parquet",),
    ),
    Case(
        "unreachable-address",
        lambda s: ["run", s.spec_file(), "--address", "127.0.0.1:1"],
        ("127.0.0.1:1", "no Ray cluster"),
    ),
]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")  # no `wandb login` entry


def test_the_catalogue_has_at_least_45_distinct_cases() -> None:
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_one_clear_message_and_exit_2(
    case: Case, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    setup = Setup(tmp_path, tiny_bert)
    argv = case.argv(setup)
    before = _hashes(tmp_path)
    started = time.time()
    code = cli.main(argv)
    seconds = time.time() - started
    out, err = capsys.readouterr()
    err = out + err  # `audit` reports on stdout
    assert code == 2, err
    assert "Traceback" not in err and err.strip(), err
    for expected in case.expect:
        assert expected in err, err
    for misleading in case.absent:
        assert misleading not in err, err
    assert not ray.is_initialized(), "Ray was started for input that was bad from the start"
    assert _hashes(tmp_path) == before, "a file changed, or one was left behind"
    assert seconds < 15, f"{seconds:.0f} s to say so"
    assert err.count("\n") <= 12, err  # one message, not a log
