"""A task's image files as the loaders read them, without torch: what the prepare stage,
the folder route and the checks of a dataset's files need, in processes that never
train.

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
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SPLITS = ("train", "test")
# What counts as an image, by extension (case-insensitive): torchvision's ImageFolder's.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
    last = text.rstrip().splitlines()[-1]  # "piggyback.data.images.DataError: <message>"
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


@dataclass(frozen=True)
class ScannedSplit:
    """One split's classes (its non-hidden folders, in name order), its images as
    (path, class index) in the order a loader reads them, and what was skipped (hidden
    files and files that are not images, relative to the split)."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str]


def scan_split(folder: Path) -> ScannedSplit:
    """The split's images in ImageFolder's order (classes, then ``os.walk`` sorted, then
    file names sorted); refuses a split without class folders, or with an empty class,
    by name."""
    classes = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"{folder} holds no class folders: expected {folder}/<class>/<image>")
    samples, skipped = [], []
    for index, name in enumerate(classes):
        for root, _, names in sorted(os.walk(os.path.join(folder, name), followlinks=True)):
            for file_name in sorted(names):
                path = os.path.join(root, file_name)
                relative = Path(path).relative_to(folder)
                if any(part.startswith(".") for part in relative.parts) or not (
                    path.lower().endswith(IMAGE_EXTENSIONS)
                ):
                    skipped.append(str(relative))
                else:
                    samples.append((path, index))
    counts = Counter(index for _, index in samples)
    empty = [name for index, name in enumerate(classes) if counts[index] == 0]
    if empty:
        more = f" (and {len(empty) - 1} more empty class folders)" if empty[1:] else ""
        raise DataError(
            f"{folder}/{empty[0]} has no images{more}: every class needs at least one "
            f"({' '.join(IMAGE_EXTENSIONS)}); fill or remove the folder (and fix "
            "`classes:`), or prepare the dataset again"
        )
    return ScannedSplit(classes, samples, skipped)


def image_files(root: Path) -> dict[str, dict[str, int]]:
    """Per split, every image file the split's loader reads (hidden files and files that
    are not images left out, as ``scan_split`` does), relative to ``root``, with its
    size in bytes; a missing split or an empty class raises a ``DataError``."""
    files = {}
    for split in SPLITS:
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist: expected {root}/<split>/<class>/<image>")
        samples = scan_split(folder).samples
        files[split] = {
            str(Path(path).relative_to(root)): os.stat(path).st_size for path, _ in samples
        }
    return files
