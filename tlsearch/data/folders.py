"""Image folders (`<split dir>/<class>/<image>`) read as the same two-column table a Parquet split gives:
the image's path relative to the split folder, and its class folder's name as the label.

Rows come in a fixed order, sorted by class name and then by relative path, so that a row id (a
0-based position in the split as read) names the same image on every machine and every read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa

from tlsearch.errors import UserInputError

# torchvision's ImageFolder list (every one decodes with Pillow), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Mixed into a folder's digest so that it never equals a single file's sha256.
_DIGEST_DOMAIN = b"tlsearch image folder v1\n"


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root: str | Path) -> list[tuple[str, str]]:
    """(class, path relative to `root` in POSIX form) of every image, sorted by class then path.

    Hidden entries (a name starting with `.`: `.DS_Store`, macOS's `._x.jpg`, `.ipynb_checkpoints/`)
    and non-image files are skipped; images in folders nested inside a class folder belong to that
    class (as in torchvision's ImageFolder); symbolic links are followed."""
    root = Path(root)
    if not root.exists():
        raise UserInputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UserInputError(
            f"{root} is a file where an image folder was expected (<split>/<class>/<image>); a table "
            "split needs a .parquet or .csv name"
        )
    classes, stray = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            classes.append(entry.name)
        elif is_image_file(entry.name):
            stray.append(entry.name)
    if stray:
        raise UserInputError(
            f"{root}: {len(stray)} image file(s) (e.g. {', '.join(stray[:3])}) sit directly in the split "
            f"folder, where class folders were expected: move each image into {root}/<class>/"
        )
    if not classes:
        raise UserInputError(
            f"{root} holds no class folders: an image folder is <split>/<class>/<image>, one subfolder "
            "per class named after its label"
        )
    rows: list[tuple[str, str]] = []
    empty = []
    for label in classes:
        found = []
        for directory, subdirectories, files in os.walk(root / label, followlinks=True):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            found += [(Path(directory) / f).relative_to(root).as_posix() for f in files if is_image_file(f)]
        if not found:
            empty.append(label)
        rows += [(label, path) for path in sorted(found)]
    if empty:
        raise UserInputError(
            f"{root}: class folder(s) {', '.join(empty[:5])} hold no images (files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}, any case): add images or remove the folder(s)"
        )
    return rows


def read_image_folder(root: str | Path, image_column: str, label_column: str) -> pa.Table:
    rows = list_image_folder(root)
    return pa.table(
        {
            image_column: pa.array([path for _, path in rows], pa.string()),
            label_column: pa.array([label for label, _ in rows], pa.string()),
        }
    )


def image_folder_sha256(root: str | Path) -> str:
    """The content hash of the images a folder's rows read: every row's relative path and the sha256
    of its bytes, in row order. Touching a file (its modification time) leaves it alone; changing,
    adding, removing or renaming an image changes it; hidden and non-image files do not count."""
    root = Path(root)
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    for _, relative in list_image_folder(root):
        name = relative.encode()
        with open(root / relative, "rb") as f:
            image = hashlib.file_digest(f, "sha256").digest()
        digest.update(b"%d:%s%s" % (len(name), name, image))
    return digest.hexdigest()
