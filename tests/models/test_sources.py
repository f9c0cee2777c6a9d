"""Model sources: tiny real models built from code, saved locally and loaded back by path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlsearch.errors import UserInputError
from tlsearch.models import build_model, resolve_lora_targets
from tlsearch.spec.model import ModelSpec
from tlsearch.testing import make_model_that_ships_code


def timm_spec(name: str, **kw: object) -> ModelSpec:
    return ModelSpec(source="timm", name=name, task="image-classification", **kw)  # type: ignore[arg-type]


def hf_spec(name: str, **kw: object) -> ModelSpec:
    return ModelSpec(source="hf", name=name, task="text-classification", **kw)  # type: ignore[arg-type]


def test_timm_local_directory_round_trip(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    original = timm.create_model("test_vit", pretrained=False, num_classes=7)
    save_for_hf(original, str(tmp_path / "vit"), safe_serialization=True)
    loaded = build_model(timm_spec(str(tmp_path / "vit")), num_classes=3).model
    # Backbone weights come from the directory; the head is new (3 classes).
    for name, tensor in original.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.get_classifier().out_features == 3


def test_timm_checkpoint_file_needs_and_uses_the_architecture(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    original = timm.create_model("test_resnet", pretrained=False)
    save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(UserInputError, match=r"set model\.architecture"):
        build_model(timm_spec(str(tmp_path / "w.safetensors")), num_classes=2)
    loaded = build_model(
        timm_spec(str(tmp_path / "w.safetensors"), architecture="test_resnet"), num_classes=2
    ).model
    for name, tensor in original.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.get_classifier().out_features == 2


def test_pretrained_false_keeps_the_architecture_with_random_weights(tmp_path: Path, tiny_bert: Path) -> None:
    with_weights = build_model(hf_spec(str(tiny_bert)), num_classes=3).model
    scratch = build_model(hf_spec(str(tiny_bert), pretrained=False), num_classes=3).model
    assert [n for n, _ in with_weights.named_parameters()] == [n for n, _ in scratch.named_parameters()]
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(with_weights.state_dict()[name], scratch.state_dict()[name])


def test_hf_local_directory_round_trip(tiny_bert: Path) -> None:
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(tiny_bert)
    loaded = build_model(hf_spec(str(tiny_bert)), num_classes=3)
    name = "encoder.layer.1.output.dense.weight"
    assert torch.equal(saved.state_dict()[name], loaded.model.state_dict()["bert." + name])
    assert loaded.head_modules == ("classifier",)
    assert loaded.preprocessing("goal team")["input_ids"][0] == loaded.preprocessing.cls_token_id


def test_a_checkpoints_own_head_is_replaced_by_a_new_one(tmp_path: Path, tiny_bert: Path) -> None:
    import timm
    from timm.models import save_for_hf
    from transformers import AutoModelForSequenceClassification

    finetuned = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=3, ignore_mismatched_sizes=True
    )
    with torch.no_grad():
        finetuned.classifier.weight.fill_(0.5)
    finetuned.save_pretrained(tmp_path / "hf")
    for file in ("vocab.txt", "tokenizer_config.json", "tokenizer.json"):  # the tokenizer beside the model
        (tmp_path / "hf" / file).write_bytes((tiny_bert / file).read_bytes())
    loaded = build_model(hf_spec(str(tmp_path / "hf")), num_classes=3).model
    assert not torch.equal(loaded.classifier.weight, finetuned.classifier.weight)
    assert torch.equal(loaded.bert.pooler.dense.weight, finetuned.bert.pooler.dense.weight)

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    with torch.no_grad():
        vit.head.weight.fill_(0.5)
    save_for_hf(vit, str(tmp_path / "vit"), safe_serialization=True)
    loaded_vit = build_model(timm_spec(str(tmp_path / "vit")), num_classes=3).model
    assert not torch.equal(loaded_vit.head.weight, vit.head.weight)


def test_unknown_names_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="Did you mean `test_vit`"):
        build_model(timm_spec("test_vitt"), num_classes=2)
    with pytest.raises(UserInputError, match="is not a local directory"):
        build_model(hf_spec(str(tmp_path / "nothing-here")), num_classes=2)
    (tmp_path / "empty-dir").mkdir()  # a directory, but no model in it
    with pytest.raises(UserInputError, match="cannot load Hugging Face model"):
        build_model(hf_spec(str(tmp_path / "empty-dir")), num_classes=2)


def test_meta_probe_reads_no_weights(tiny_bert: Path) -> None:
    probe = build_model(hf_spec(str(tiny_bert)), num_classes=3, weights=False)
    assert next(probe.model.parameters()).device.type == "meta"
    assert probe.layers.num_blocks == 2


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("attention", {"blocks.0.attn.qkv", "blocks.0.attn.proj"}),
        (
            "attention_mlp",
            {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"},
        ),
    ],
)
def test_lora_presets_on_timm_vit(preset: str, expected: set[str]) -> None:
    loaded = build_model(timm_spec("test_vit", pretrained=False), num_classes=3, weights=False)
    targets = resolve_lora_targets(loaded, preset)
    assert {t for t in targets if t.startswith("blocks.0.")} == expected
    assert not any(t.startswith("head") for t in resolve_lora_targets(loaded, "all_linear"))


def test_lora_presets_on_hf_bert(tiny_bert: Path) -> None:
    loaded = build_model(hf_spec(str(tiny_bert)), num_classes=3, weights=False)
    attention = resolve_lora_targets(loaded, "attention")
    assert "bert.encoder.layer.0.attention.self.query" in attention
    assert "bert.encoder.layer.0.attention.output.dense" in attention
    assert "bert.encoder.layer.0.intermediate.dense" not in attention
    mlp = resolve_lora_targets(loaded, "attention_mlp")
    assert "bert.encoder.layer.0.intermediate.dense" in mlp and "bert.encoder.layer.0.output.dense" in mlp
    assert "bert.pooler.dense" not in mlp and "bert.pooler.dense" in resolve_lora_targets(
        loaded, "all_linear"
    )
    assert "classifier" not in resolve_lora_targets(loaded, "all_linear")


def test_lora_on_a_cnn_fails_with_the_candidates() -> None:
    loaded = build_model(timm_spec("test_efficientnet", pretrained=False), num_classes=3, weights=False)
    with pytest.raises(UserInputError, match="matches no module of this model"):
        resolve_lora_targets(loaded, "attention")


def test_lora_on_an_mlp_names_the_candidates_and_the_presets_that_fit() -> None:
    loaded = build_model(timm_spec("mixer_s32_224", pretrained=False), num_classes=3, weights=False)
    with pytest.raises(UserInputError) as caught:
        resolve_lora_targets(loaded, "attention")
    message = str(caught.value)
    assert message.startswith("strategies.lora.targets: the LoRA target preset `attention`")
    assert "blocks.0.mlp_tokens.fc1" in message and "(attention_mlp, all_linear)" in message
    assert resolve_lora_targets(loaded, "attention_mlp")  # what the message offers does select modules


def _copy_without_weights(source: Path, directory: Path) -> Path:
    directory.mkdir()
    for file in source.iterdir():
        if file.is_file() and file.suffix != ".safetensors":
            (directory / file.name).write_bytes(file.read_bytes())
    return directory


def test_model_files_weights_are_safetensors_that_open(tmp_path: Path, tiny_bert: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tlsearch.models.files import check_model_files

    check_model_files(hf_spec(str(tiny_bert)))
    # Sharded weights: every shard is checked, and two good ones pass.
    sharded = _copy_without_weights(tiny_bert, tmp_path / "sharded")
    tensors = list(load_file(tiny_bert / "model.safetensors").items())
    save_file(dict(tensors[:5]), str(sharded / "model-00001-of-00002.safetensors"))
    save_file(dict(tensors[5:]), str(sharded / "model-00002-of-00002.safetensors"))
    check_model_files(hf_spec(str(sharded)))
    # A truncated shard is refused, naming it.
    shard = sharded / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.raises(UserInputError, match=r"model-00002-of-00002\.safetensors is not a readable"):
        check_model_files(hf_spec(str(sharded)))
    # A configuration alone is a model to train from random weights, not from missing ones.
    bare = _copy_without_weights(tiny_bert, tmp_path / "bare")
    check_model_files(hf_spec(str(bare), pretrained=False))
    with pytest.raises(UserInputError, match="no weights"):
        check_model_files(hf_spec(str(bare)))


def test_pickled_weights_are_never_loaded(tmp_path: Path, tiny_bert: Path) -> None:
    """Even past the up-front check (a trial's own load), transformers is asked for safetensors only."""
    from safetensors.torch import load_file

    pickled = _copy_without_weights(tiny_bert, tmp_path / "bin")
    torch.save(load_file(tiny_bert / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(UserInputError, match="cannot load Hugging Face model"):
        build_model(hf_spec(str(pickled)), num_classes=2)
    build_model(hf_spec(str(pickled), pretrained=False), num_classes=2)  # no weights read: fine


def test_max_length_within_the_position_embeddings(tiny_bert: Path) -> None:
    """The loaded model's limit (what `run` checks, a hub id having no local config.json to read), and
    only a max_length the spec sets is refused."""
    from tlsearch.models.files import check_max_length

    probe = build_model(hf_spec(str(tiny_bert)), num_classes=2, weights=False)
    assert probe.max_tokens == 64  # make_tiny_bert's max_position_embeddings
    check_max_length(hf_spec(str(tiny_bert), max_length=64), probe.max_tokens)
    check_max_length(hf_spec(str(tiny_bert)), probe.max_tokens)  # the default 128: not set, not refused
    with pytest.raises(UserInputError, match=r"model.max_length is 65, .* at most 64 tokens"):
        check_max_length(hf_spec(str(tiny_bert), max_length=65), probe.max_tokens)


def test_the_source_registry_is_strict() -> None:
    from tlsearch.models.base import register
    from tlsearch.models.sources import SOURCES
    from tlsearch.models.timm_source import TimmSource

    assert set(SOURCES) == {"timm", "hf"}
    with pytest.raises(ValueError, match="already registered"):
        register(TimmSource())
    with pytest.raises(UserInputError, match="Did you mean `timm`"):
        SOURCES.get("tim")


def test_a_model_that_ships_code_runs_it_only_when_the_spec_says_so(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = make_model_that_ships_code(tiny_bert, tmp_path / "shipped")
    assert hf_spec(str(shipped)).trust_remote_code is False
    with pytest.raises(UserInputError, match=r"ships its own code.*set `model.trust_remote_code: true`"):
        build_model(hf_spec(str(shipped)), num_classes=3)
    assert "warning" not in capsys.readouterr().err

    loaded = build_model(hf_spec(str(shipped), trust_remote_code=True), num_classes=3)
    assert type(loaded.model).__name__ == "ShippedForSequenceClassification"  # its code ran
    build_model(hf_spec(str(shipped), trust_remote_code=True), num_classes=3, weights=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "trust_remote_code" in line]
    assert warnings == [
        f"[tlsearch] warning: model.trust_remote_code is true: this process runs code shipped with "
        f"{shipped}, with your permissions"
    ]  # once per process, naming the model
