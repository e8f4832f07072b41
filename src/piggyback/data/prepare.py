"""How a dataset becomes ``<out>/{train,test}/<class>/<image>``: the route's files, found in
the downloads folder, are unpacked (the ``authors`` route), split and cropped
(:mod:`piggyback.data.originals`) or written (``digits``, ``fashion_mnist``: a
per-class subset of :mod:`piggyback.data.fashion_mnist`'s files); a ``folder`` dataset
stays where it is, and ``<out>`` holds only its record (:mod:`piggyback.data.folders`).

Preparation happens in a temporary folder beside ``out`` that is renamed at the end, and
``prepared.json`` is written last, so a half-prepared dataset is never seen.

Every image's header is read once here: one that Pillow cannot open stops the stage,
naming it, and each image above Pillow's decompression-bomb limit is named in the log and
in ``prepared.json`` (``large_images``). Such images are decoded as they are, here and in
training (``pillow_limit_lifted``), rather than resized once here: the archives are
trusted, and the authors' code trained on the full images, resized per epoch by the
transforms; a copy resized here would give other pixels after the transforms' resize.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from piggyback.data.archives import extract_archive, is_content_dir, replace_folder
from piggyback.data.digits import write_digits_task
from piggyback.data.fashion_mnist import write_fashion_mnist
from piggyback.data.folders import prepare_folder
from piggyback.data.images import SPLITS, DataError, check_class_count, image_files, image_size
from piggyback.data.originals import ORIGINAL_ROUTES
from piggyback.data.sources import (
    SourceError,
    authors_archive_name,
    missing_file_message,
    source_files,
)
from piggyback.files.atomic import atomic_write_json

PREPARED_MARKER = "prepared.json"


def prepare_dataset(
    dataset: str,
    source: dict,
    downloads: Path,
    out: Path,
    classes: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Build ``out/{train,test}/<class>/<image>`` and ``out/prepared.json`` (last); for
    the ``folder`` route, ``out/prepared.json`` alone.

    The work happens in temporary folders beside ``out``; ``out`` appears, or is
    replaced, only once everything is written and the class count is as expected.
    """
    downloads, out = Path(downloads), Path(out)
    files = {}
    for needed in source_files(dataset, source):
        path = downloads / needed.name
        if not path.is_file():
            raise SourceError(
                missing_file_message(dataset, source, needed.name, downloads)
                + " (download.py fetches it)"
            )
        files[needed.name] = path
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.preparing-", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpacked-", dir=out.parent))
    try:
        route = source["route"]
        if route == "folder":
            summary = prepare_folder(
                dataset, source, out, classes, lambda root, found: _scan(root, found, log)
            )
        else:
            details = {}
            if route == "authors":
                _prepare_authors(files, staging, scratch, progress)
            elif route == "digits":
                _prepare_digits(source, staging)
            elif route == "fashion_mnist":
                details = write_fashion_mnist(dataset, source, downloads, staging)
            else:
                ORIGINAL_ROUTES[source["kind"]](files, staging, scratch, dataset, progress)
            summary = {**_summarise(dataset, source, staging, out, classes), **details}
            summary["large_images"] = _scan_prepared(staging, out, log)
        shutil.rmtree(scratch)
        atomic_write_json(summary, staging / PREPARED_MARKER)
        replace_folder(staging, out)
    finally:
        for folder in (staging, scratch):
            if folder.exists():
                shutil.rmtree(folder)
    return summary


def _summarise(dataset: str, source: dict, staging: Path, out: Path, classes: int | None) -> dict:
    """Counts per split, after checking both splits have the registry's classes."""
    found = {}
    images = {}
    for split in SPLITS:
        folder = staging / split
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        found[split] = [p.name for p in class_dirs]
        images[split] = sum(
            1 for d in class_dirs for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
        )
    if found["train"] != found["test"]:
        only_train = sorted(set(found["train"]) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(found["train"]))
        raise SourceError(
            f"{out}: train/ and test/ would have different classes "
            f"(only in train/: {only_train[:5]}, only in test/: {only_test[:5]})"
        )
    counted = f"{out}: the prepared data has"
    check_class_count(counted, len(found["train"]), classes, "the archive", SourceError)
    summary = {
        "dataset": dataset,
        "route": source["route"],
        "classes": len(found["train"]),
        "images": images,
    }
    if source["route"] == "original":
        summary["kind"] = source["kind"]
    elif source["route"] == "authors":
        summary["archive"] = authors_archive_name(dataset, source)
    return summary


def _scan_prepared(staging: Path, out: Path, log: Callable[[str], None]) -> list[dict]:
    """``_scan`` of a dataset prepared in ``staging``, its messages naming ``out``, where
    it is about to be."""
    try:
        return _scan(staging, image_files(staging), log, shown=out)
    except DataError as error:
        raise SourceError(str(error).replace(str(staging), str(out))) from None


def _scan(
    root: Path, files: dict[str, dict[str, int]], log: Callable[[str], None], shown=None
) -> list[dict]:
    """Every image's header: one Pillow cannot open raises a ``DataError``; each image
    above Pillow's decompression-bomb limit is logged and returned."""
    limit = Image.MAX_IMAGE_PIXELS
    large = []
    for split in SPLITS:
        for name in files[split]:
            width, height = image_size(root / name)
            if limit is not None and width * height > limit:
                large.append({"image": name, "width": width, "height": height})
                log(
                    f"{shown or root}/{name}: {width} x {height} pixels "
                    f"({width * height / 1e6:.0f} megapixels), above Pillow's limit of "
                    f"{limit / 1e6:.0f} (it warns there and refuses twice as many): "
                    "decoded whole all the same, here and in training, as the authors' "
                    "Pillow did (the dataset is trusted)"
                )
    return large


# --- route: authors ---------------------------------------------------------------------


def _prepare_authors(files: dict[str, Path], staging: Path, scratch: Path, progress: bool) -> None:
    (archive,) = files.values()
    unpacked = extract_archive(archive, scratch / "archive", progress=progress)
    root = _find_split_root(unpacked, archive)
    for split in SPLITS:
        os.replace(root / split, staging / split)


def _find_split_root(unpacked: Path, archive: Path) -> Path:
    """The shallowest folder (at most two levels down) holding both train/ and test/."""
    level = [unpacked]
    for _ in range(3):
        hits = [f for f in level if (f / "train").is_dir() and (f / "test").is_dir()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = [str(h.relative_to(unpacked)) for h in hits]
            raise SourceError(f"{archive} holds several datasets ({names}); expected one")
        level = [c for f in level for c in sorted(f.iterdir()) if is_content_dir(c)]
    raise SourceError(
        f"{archive} holds no folder with both train/ and test/ "
        "(expected <name>/train/<class>/... and <name>/test/<class>/...)"
    )


# --- route: digits ----------------------------------------------------------------------


DIGITS_OPTIONS = ("view", "per_class", "test_fraction", "seed")


def _prepare_digits(source: dict, staging: Path) -> None:
    """What the entry leaves out (or sets to null) takes ``write_digits_task``'s default."""
    options = {key: source[key] for key in DIGITS_OPTIONS if source.get(key) is not None}
    try:
        write_digits_task(staging, digits=[int(d) for d in source["digits"]], **options)
    except (ValueError, TypeError) as error:
        raise SourceError(f"digits source entry {source}: {error}") from None
