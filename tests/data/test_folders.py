"""Image folders (<split>/<class>/<image>) read as tables: rows, labels, order, the content hash, the
images decoding through ImageDataset, and a clear error for each malformed folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tlsearch.data.datasets import ImageDataset, load_split
from tlsearch.data.folders import list_image_folder
from tlsearch.data.tables import DataFiles, column_names, file_sha256, label_set, read_table
from tlsearch.errors import UserInputError
from tlsearch.testing import image_rows, write_image_folder, write_parquet


def png(path: Path, colour: tuple[int, int, int] = (10, 20, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    png(root / "dog" / "b.png")
    png(root / "dog" / "A.PNG")  # extensions in any case
    png(root / "dog" / "more" / "c.png")  # nested: still a dog
    png(root / "cat" / "z.png")
    png(root / "cat-kitten" / "a.png")  # sorts after `cat` by class, before it as a plain path string
    png(root / "cat" / ".hidden.png")  # hidden files ...
    png(root / "cat" / "._z.png")  # ... including macOS's resource forks
    png(root / ".ipynb_checkpoints" / "x.png")  # a hidden folder is no class
    png(root / "dog" / ".cache" / "y.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("a non-image file beside the classes is ignored too")
    return root


def test_a_folder_reads_as_a_table_sorted_by_class_then_path(folder: Path) -> None:
    table = read_table(folder)
    assert table.column_names == ["image", "label"]
    assert table.to_pylist() == [
        {"image": "cat/z.png", "label": "cat"},
        {"image": "cat-kitten/a.png", "label": "cat-kitten"},
        {"image": "dog/A.PNG", "label": "dog"},
        {"image": "dog/b.png", "label": "dog"},
        {"image": "dog/more/c.png", "label": "dog"},
    ]
    assert column_names(folder) == ["image", "label"]
    assert read_table(folder, ["label"], folder_columns=("img", "label")).column_names == ["label"]
    assert read_table(folder, folder_columns=("img", "y")).column_names == ["img", "y"]
    assert label_set([read_table(folder, ["label"])], "label") == ("cat", "cat-kitten", "dog")
    with pytest.raises(UserInputError, match="image folder, read as the columns image, label"):
        read_table(folder, ["pixels"])


def test_the_content_hash_follows_the_images_not_their_timestamps(folder: Path) -> None:
    digest = file_sha256(folder)
    assert digest == file_sha256(folder) and len(digest) == 64
    image = folder / "dog" / "b.png"
    os.utime(image, (1_000_000_000, 1_000_000_000))  # touched: same bytes
    (folder / "dog" / "more-notes.txt").write_text("ignored files do not count")
    png(folder / "cat" / ".another-hidden.png")
    assert file_sha256(folder) == digest

    png(image, colour=(10, 20, 31))  # one pixel value in one image
    changed = file_sha256(folder)
    assert changed != digest
    image.rename(folder / "dog" / "b2.png")  # same bytes, another name
    assert file_sha256(folder) != changed
    (folder / "dog" / "b2.png").rename(folder / "cat" / "b2.png")  # same name, another class
    assert len({digest, changed, file_sha256(folder)}) == 3


def test_folder_splits_load_and_decode_an_epoch(tmp_path: Path) -> None:
    """A folder train split, a Parquet validation split: one DataFiles, one label set."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    train_rows = image_rows(9, seed=0, size=16)
    train = write_image_folder(train_rows, tmp_path / "train")
    validation = write_parquet(image_rows(6, seed=1, size=16), tmp_path / "validation.parquet")
    labels = label_set([read_table(train, ["label"]), read_table(validation, ["label"])], "label")
    assert labels == ("0", "1", "2")
    files = DataFiles(str(train), str(validation), None, "image", "image", "label", labels)

    split = load_split(files, "train")
    assert split.base_dir == train.resolve()
    assert split.inputs[:4] == ["0/000.png", "0/003.png", "0/006.png", "1/001.png"]
    assert split.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    transform = create_transform(input_size=(3, 16, 16), crop_pct=1.0, use_prefetcher=True)
    dataset = ImageDataset(split, transform)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=ImageDataset.collate)
    seen = []
    for images, targets in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
        seen += targets.tolist()
    assert sorted(seen) == sorted(split.targets.tolist())
    # The folder's row 0 is train_rows[0]'s image, decoded as a Parquet split holding its bytes does.
    as_bytes = write_parquet(train_rows[:1], tmp_path / "one.parquet")
    one = ImageDataset(
        load_split(DataFiles(str(as_bytes), str(as_bytes), None, "image", "image", "label", labels), "train"),
        transform,
    )
    assert torch.equal(dataset[0][0], one[0][0])

    subset = load_split(
        DataFiles(str(train), str(validation), None, "image", "image", "label", labels, max_train_samples=6),
        "train",
    )
    assert sorted(subset.targets.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified, as for tables


def test_malformed_folders_get_one_clear_error_each(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="holds no class folders"):
        read_table(empty)

    no_images = tmp_path / "no-images"
    png(no_images / "cat" / "a.png")
    (no_images / "dog" / "sub").mkdir(parents=True)
    (no_images / "dog" / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match=r"class folder\(s\) dog hold no images"):
        file_sha256(no_images)

    flat = tmp_path / "flat"
    png(flat / "cat" / "a.png")
    png(flat / "B.JPG")  # an image where a class folder belongs
    with pytest.raises(UserInputError, match="sit directly in the split folder, where class folders"):
        list_image_folder(flat)

    a_file = png(tmp_path / "train")
    with pytest.raises(UserInputError, match="is a file where an image folder was expected"):
        list_image_folder(a_file)
    with pytest.raises(UserInputError, match="image folder not found"):
        list_image_folder(tmp_path / "nowhere")
