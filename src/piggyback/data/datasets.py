"""A task's ImageFolder splits, and the loaders that batch them.

What the data on disk may hold, and what happens (docs/reliability.md):
- class folders: every non-hidden folder of ``<split>/`` is a class, in name order;
  hidden ones (``.ipynb_checkpoints``) are ignored, so they can never shift the labels.
  A split without class folders, a class folder without images, or a class in only
  one of ``train/`` and ``test/`` stops the job with a ``DataError`` naming the folder.
- files that are not images (by extension: ``README.txt``, ``Thumbs.db``) and hidden
  files (``.DS_Store``, macOS ``._name.jpg``) are skipped, with their count in the log.
- a file that claims to be an image but cannot be decoded (truncated, corrupt,
  unreadable) stops the job with a ``DataError`` naming it, when the loader reaches it:
  every image is read in the first epoch, so this costs no extra pass over the data.
- an image of any size is decoded: Pillow's decompression-bomb limit (about 179
  megapixels) is lifted for these trusted archives (``pillow_limit_lifted``), and the
  prepare stage names each image above it in its log.

The transforms are :mod:`piggyback.data.transforms`.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from piggyback.data.transforms import TaskTransform

SPLITS = ("train", "test")


class DataError(ValueError):
    """The data on disk is not what the config says; the message names the folder or file."""


def check_class_count(
    counted: str,
    found: int,
    expected: int | None,
    remedy: str,
    error: type[Exception] = DataError,
) -> None:
    """Stop unless ``found`` classes are the dataset registry's ``expected`` (None: not
    known, not checked). ``counted`` names what was counted and how ("data/x: found"),
    ``remedy`` what to fix if the config's `classes:` is right."""
    if expected is not None and found != expected:
        raise error(
            f"{counted} {found} classes, the dataset registry says {expected}; fix "
            f"`classes:` in the config or {remedy}"
        )


def error_message(error: BaseException) -> str:
    """The error's own message, without the traceback that a DataLoader worker process
    prepends when it re-raises an error in the main process."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "piggyback.data.datasets.DataError: <message>"
    return last.split(": ", 1)[-1]


_PIXEL_LIMIT = threading.Lock()


@contextmanager
def pillow_limit_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb guard off for the block. Pillow refuses an image above
    twice ``Image.MAX_IMAGE_PIXELS`` (about 179 megapixels) and warns above it, against
    untrusted files; these datasets are trusted archives, a few of WikiArt's paintings
    are that large, and the authors' Pillow decoded them with a warning their code
    silenced. Pillow reads the limit as a module global: the block holds a lock, and
    only opening (which checks the limit) is done in it, not decoding."""
    with _PIXEL_LIMIT:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def read_image(path: str) -> Image.Image:
    """An image as RGB, whatever its size; a file that cannot be decoded raises a
    ``DataError`` naming it."""
    try:
        return open_rgb(path)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError...
        raise unreadable(path, error) from None


def open_rgb(path: str | Path) -> Image.Image:
    """An image of any mode (greyscale, palette, RGBA, CMYK, 16-bit) and size as RGB,
    as every split is read; raises what Pillow raises on a file it cannot decode."""
    with open(path, "rb") as handle:
        with pillow_limit_lifted():
            image = Image.open(handle)
        return image.convert("RGB")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, whatever its size; a file Pillow cannot
    open raises a ``DataError`` naming it."""
    try:
        with open(path, "rb") as handle, pillow_limit_lifted():
            return Image.open(handle).size
    except Exception as error:
        raise unreadable(path, error) from None


def unreadable(path, error: BaseException) -> DataError:
    return DataError(
        f"cannot read image {path} ({type(error).__name__}: {error}): the file is "
        "truncated, corrupt or unreadable; replace it, or prepare the dataset again "
        "(delete its data folder and rerun the workflow)"
    )


class TaskImageFolder(datasets.ImageFolder):
    """``ImageFolder`` that ignores hidden folders, skips (and counts) files that are not
    images, refuses empty classes by name, and reads images with ``read_image``."""

    def __init__(self, root: Path, transform=None):
        self.skipped: list[str] = []
        super().__init__(
            str(root),
            transform=transform,
            loader=read_image,
            is_valid_file=self._is_image,
            allow_empty=True,  # checked below, with a message naming the folders
        )
        counts = Counter(self.targets)
        empty = [name for index, name in enumerate(self.classes) if counts[index] == 0]
        if empty:
            more = f" (and {len(empty) - 1} more empty class folders)" if empty[1:] else ""
            raise DataError(
                f"{root}/{empty[0]} has no images{more}: every class needs at least one "
                f"({' '.join(IMG_EXTENSIONS)}); fill or remove the folder (and fix "
                "`classes:`), or prepare the dataset again"
            )

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        if not classes:
            raise DataError(
                f"{directory} holds no class folders: expected {directory}/<class>/<image>"
            )
        return classes, {name: index for index, name in enumerate(classes)}

    def _is_image(self, path: str) -> bool:
        relative = Path(path).relative_to(self.root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if hidden or not has_file_allowed_extension(path, IMG_EXTENSIONS):
            self.skipped.append(str(relative))
            return False
        return True


def image_files(root: Path) -> dict[str, dict[str, int]]:
    """Per split, every image file the split's loader reads (hidden files and files that
    are not images left out, as ``TaskImageFolder`` does), relative to ``root``, with its
    size in bytes; a missing split or an empty class raises a ``DataError``."""
    files = {}
    for split in SPLITS:
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist: expected {root}/<split>/<class>/<image>")
        samples = TaskImageFolder(folder).samples
        files[split] = {
            str(Path(path).relative_to(root)): os.stat(path).st_size for path, _ in samples
        }
    return files


def load_split(
    root: Path,
    split: str,
    transform: TaskTransform,
    train: bool,
    log: Callable[[str], None] = print,
) -> TaskImageFolder:
    """One split; files that are not images are skipped and their count logged."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: expected {root}/<split>/<class>/<image>")
    dataset = TaskImageFolder(folder, transform=transform.build(train))
    if dataset.skipped:
        log(
            f"{folder}: skipped {len(dataset.skipped)} file(s) that are not images or are "
            f"hidden (e.g. {dataset.skipped[0]}); using {len(dataset)} images"
        )
    return dataset


def load_task_data(
    root: Path,
    transform: TaskTransform,
    num_classes: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[TaskImageFolder, TaskImageFolder]:
    """Train and test splits, checked to share one class list (and its expected size)."""
    train = load_split(root, "train", transform, True, log)
    test = load_split(root, "test", transform, False, log)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DataError(
            f"{root}: train/ and test/ have different classes "
            f"(only in train/: {only_train[:5]}, only in test/: {only_test[:5]})"
        )
    check_class_count(f"{root}: found", len(train.classes), num_classes, "the data folder")
    return train, test


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, workers: int = 0) -> DataLoader:
    """A loader whose order and augmentation depend only on ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
