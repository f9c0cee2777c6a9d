"""Image augmentation and mixup (`strategies.common`): only the training split changes, the feature
cache is off with its reason, mixup trains on soft targets, and the spec refuses what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlsearch.errors import SpecError
from tlsearch.spec import validate_spec
from tlsearch.testing import image_spec, text_spec, trial_config, trial_inputs
from tlsearch.train.loop import setup_training, train_epoch
from tlsearch.train.losses import TrainingLoss
from tlsearch.train.session import TuneSession

COMMON = {"weight_decay": 0.0, "warmup_fraction": 0.0, "batch_size": 8}


def partial(**common: object):  # type: ignore[no-untyped-def]
    return trial_config(
        "partial",
        head_lr=1e-2,
        backbone_lr=1e-3,
        layer_decay=0.5,
        unfreeze_depth=1,
        **{**COMMON, **common},
    )


def setup(image_data: dict, tmp_path: Path, **common: object):  # type: ignore[no-untyped-def]
    inputs = trial_inputs(image_spec(image_data, tmp_path / "runs"), partial(**common), tmp_path)
    return setup_training(inputs, TuneSession(use_gpu=False))


@pytest.mark.parametrize("augmentation", ["light", "randaugment"])
def test_augmentation_changes_training_images_only_and_turns_the_cache_off(
    augmentation: str, image_data: dict, tmp_path: Path
) -> None:
    plain = setup(image_data, tmp_path / "plain")
    assert plain.feature_cache.status == "built"  # partial's frozen prefix, cached
    t = setup(image_data, tmp_path / "augmented", augmentation=augmentation)
    assert (t.feature_cache.status, t.feature_cache.reason) == ("off", "augmentation")
    train, validation = t.train_loader.dataset, t.val_loader.dataset.dataset  # (a Subset per rank)
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(4)]
    assert draws[0].dtype == torch.uint8 and draws[0].shape == (3, 32, 32)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # other pixels every time
    # Validation: the deterministic transform, the same pixels as a trial without augmentation.
    full = trial_config("full", head_lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, **COMMON)
    inputs = trial_inputs(image_spec(image_data, tmp_path / "runs"), full, tmp_path / "full")
    reference = setup_training(inputs, TuneSession(use_gpu=False)).val_loader.dataset.dataset
    assert all(torch.equal(validation[i][0], validation[i][0]) for i in range(3))
    assert all(torch.equal(validation[i][0], reference[i][0]) for i in range(3))
    loss_sum, seen = train_epoch(t, 0)
    assert seen == 36 and torch.isfinite(loss_sum)


def test_mixup_trains_on_soft_targets_without_the_cache(image_data: dict, tmp_path: Path) -> None:
    t = setup(image_data, tmp_path, mixup=0.4, label_smoothing=0.1)
    assert (t.feature_cache.status, t.feature_cache.reason) == ("off", "mixup")
    assert t.mixup.mixup_alpha == 0.4 and t.mixup.label_smoothing == 0.1
    targets: list[torch.Tensor] = []
    loss = t.loss

    def recording(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        targets.append(target)
        return loss(logits, target)

    t.loss = recording  # type: ignore[assignment]  # the loop's loss, watched
    loss_sum, seen = train_epoch(t, 0)
    assert torch.isfinite(loss_sum) and seen == 36
    assert all(x.dtype == torch.float32 and x.shape[1] == 3 for x in targets)  # soft, per class
    assert all(torch.allclose(x.sum(1), torch.ones(len(x))) for x in targets)
    assert any(x.max() < 0.95 for x in targets)  # mixed (and smoothed)


def test_an_odd_last_batch_leaves_one_row_out_of_mixup() -> None:
    from tlsearch.train.loop import _even

    x, y = torch.zeros(5, 3, 4, 4), torch.arange(5)
    kept_x, kept_y = _even(x, y)
    assert kept_x.shape[0] == 4 and kept_y.tolist() == [0, 1, 2, 3]
    assert _even(x[:4], y[:4])[1].tolist() == [0, 1, 2, 3]


def test_soft_targets_take_plain_cross_entropy() -> None:
    logits = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 0.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    # label smoothing is in mixup's targets already: not applied twice
    assert TrainingLoss(label_smoothing=0.3)(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_spec_refuses_augmentation_for_text_and_mixup_with_focal_loss_or_class_weights(
    tiny_bert: Path, text_data: dict, image_data: dict, tmp_path: Path
) -> None:
    with pytest.raises(SpecError) as text:
        validate_spec(
            text_spec(
                tiny_bert,
                text_data,
                tmp_path,
                strategies={"full": {}, "common": {"augmentation": "light", "mixup": 0.2}},
            )
        )
    assert "strategies.common.augmentation" in str(text.value) and "strategies.common.mixup" in str(
        text.value
    )
    assert "applies to image classification only" in str(text.value)
    with pytest.raises(SpecError) as mixed:
        validate_spec(
            image_spec(
                image_data,
                tmp_path,
                strategies={
                    "full": {},
                    "common": {
                        "batch_size": 8,
                        "mixup": {"low": 0.0, "high": 0.4},
                        "loss": ["cross_entropy", "focal"],
                        "class_weighting": ["none", "balanced"],
                    },
                },
            )
        )
    message = str(mixed.value)
    assert "which focal loss does not take" in message and "which class weights do not take" in message
    with pytest.raises(SpecError, match="must be even with mixup"):
        validate_spec(
            image_spec(
                image_data, tmp_path, strategies={"full": {}, "common": {"mixup": 0.2, "batch_size": [8, 7]}}
            )
        )
    # mixup with label smoothing and plain cross-entropy is fine
    validate_spec(
        image_spec(
            image_data, tmp_path, strategies={"full": {}, "common": {"mixup": 0.2, "label_smoothing": 0.1}}
        )
    )
