"""The ``folder`` route: a dataset already unpacked on disk in the authors' layout
(``<path>/train/<class>/<image>``, ``<path>/test/<class>/<image>``), read where it is.
Nothing is copied into the pipeline's data folder and nothing is written into the
user's folder; the jobs read the folder itself.

``prepare`` checks the folder (both splits, the same classes in each, as many as the
config says, no empty class, every image readable) and records each image file the
loader reads, with its size, in the dataset's ``prepared.json``. Every job that reads
the folder compares it with that record first (``check_folder``): a file added, removed
or changed in size since then stops the job with the files named, instead of training
or evaluating on other data than was prepared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from piggyback.data.images import SPLITS, DataError, check_class_count, image_files
from piggyback.data.sources import SourceError

SHOWN = 3  # files named per kind of change


def prepare_folder(
    dataset: str,
    source: dict,
    out: Path,
    classes: int | None,
    scan: Callable[[Path, dict], list],
) -> dict:
    """The record of a folder dataset (after ``scan`` has read every image's header,
    and named the large ones); refuses a folder that is not a dataset, naming what is
    wrong, or one that is the pipeline's own data folder."""
    root = Path(source["path"])
    where = f"dataset {dataset!r} (route folder, path {root})"
    if not root.is_dir():
        raise SourceError(f"{where}: {root} is not a folder; give the dataset's folder")
    if _overlap(root, out):
        raise SourceError(
            f"{where}: the folder overlaps the pipeline's data folder {out}, which the "
            "prepare stage replaces; keep the dataset elsewhere, or set paths.data"
        )
    try:
        files = image_files(root)
    except DataError as error:
        raise SourceError(f"{where}: {error}") from None
    found = {split: sorted({Path(name).parts[1] for name in files[split]}) for split in SPLITS}
    if found["train"] != found["test"]:
        only_train = sorted(set(found["train"]) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(found["train"]))
        raise SourceError(
            f"{where}: train/ and test/ have different classes (only in train/: "
            f"{only_train[:5]}, only in test/: {only_test[:5]}); fix the folder"
        )
    check_class_count(f"{where}: has", len(found["train"]), classes, "the folder", SourceError)
    try:
        large = scan(root, files)
    except DataError as error:
        raise SourceError(f"{where}: {error}") from None
    return {
        "dataset": dataset,
        "route": "folder",
        "path": str(root),
        "classes": len(found["train"]),
        "images": {split: len(files[split]) for split in SPLITS},
        "large_images": large,
        "files": files,
    }


def _overlap(root: Path, out: Path) -> bool:
    root, out = root.resolve(), out.resolve()
    return root == out or root in out.parents or out in root.parents


def check_folder(root: Path, record: Path) -> None:
    """Refuse to read a folder dataset that differs from what ``prepare`` recorded in
    ``record`` (its ``prepared.json``): files added, removed or resized are named."""
    recorded = _recorded_files(record)
    try:
        files = image_files(root)
    except DataError as error:
        raise DataError(f"{root} changed since it was prepared ({record}): {error}") from None
    before = {name: size for split in SPLITS for name, size in recorded[split].items()}
    now = {name: size for split in SPLITS for name, size in files[split].items()}
    added = sorted(now.keys() - before.keys())
    removed = sorted(before.keys() - now.keys())
    resized = sorted(name for name in now.keys() & before.keys() if now[name] != before[name])
    kinds = (("added", added), ("removed", removed), ("changed in size", resized))
    changes = [_named(kind, names) for kind, names in kinds if names]
    if changes:
        raise DataError(
            f"{root} changed since it was prepared ({record}): {'; '.join(changes)}. The "
            "job would read other images than the prepared dataset: restore the folder, "
            f"or prepare it again (delete {record} and rerun the workflow, which then "
            "redoes every job that read it)"
        )


def _recorded_files(record: Path) -> dict[str, dict[str, int]]:
    try:
        recorded = json.loads(Path(record).read_text())
        return {split: recorded["files"][split] for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{record} holds no file list of a folder dataset ({type(error).__name__}: "
            f"{error}); prepare the dataset again (delete {record} and rerun the workflow)"
        ) from None


def _named(kind: str, names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} file(s) {kind} ({', '.join(names[:SHOWN])}{more})"
