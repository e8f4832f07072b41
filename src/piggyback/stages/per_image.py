"""Per-image results of an evaluation: for each task of an evaluation JSON, every test
image's path (relative to the split folder, so the same whether the images came through
the DataLoader or the cache), its label and the top-5 predicted classes (class indices,
best first, space-separated), in a gzipped TSV beside the JSON.

A gzipped TSV needs no library to read (``zcat``, pandas, R's ``read.delim``) and stays
small: CUBS' 5,794 test images take about 90 kB. The JSON names its file (``per_image``),
relative to its own folder. docs/statistics.md describes the columns and what the table
does with them (the paired comparisons).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from piggyback.files.atomic import atomic_write, atomic_write_json

COLUMNS = ("task", "path", "label", "top5")
SUFFIX = ".images.tsv.gz"


@dataclass(frozen=True)
class TaskImages:
    """One task's test images in evaluation order, with their labels and top-5 classes."""

    task: str
    paths: Sequence[str]
    labels: Sequence[int]
    top5: Sequence[Sequence[int]]

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.labels) == len(self.top5):
            raise ValueError(
                f"task {self.task!r}: {len(self.paths)} paths, {len(self.labels)} labels and "
                f"{len(self.top5)} predictions"
            )


def per_image_path(result: Path) -> Path:
    """Where an evaluation JSON's per-image file goes unless told: beside it."""
    result = Path(result)
    return result.with_name(result.name.removesuffix(".json") + SUFFIX)


def write_per_image(tasks: Iterable[TaskImages], path: Path) -> None:
    """Atomically: a reader sees the previous file or the whole new one. The gzip header
    holds no name and no time, so the same results give the same bytes."""

    def write(tmp: Path) -> None:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
            io.TextIOWrapper(zipped, encoding="utf-8", newline="") as text,
        ):
            writer = csv.writer(text, delimiter="\t", lineterminator="\n")
            writer.writerow(COLUMNS)
            for task in tasks:
                for path, label, top5 in zip(task.paths, task.labels, task.top5, strict=True):
                    writer.writerow((task.task, path, int(label), " ".join(map(str, top5))))

    atomic_write(Path(path), write)


def write_evaluation(result: dict, out: Path, images: Path) -> None:
    """An evaluation's JSON, naming its per-image file, then that file (``result`` holds
    its tasks' :class:`TaskImages` under ``per_image``): each written atomically, so an
    interrupted job leaves no partial file, and Snakemake, seeing an output missing or
    the job incomplete, runs it again."""
    per_image = result.pop("per_image")
    result["per_image"] = os.path.relpath(images, Path(out).parent)
    atomic_write_json(result, out)
    write_per_image(per_image, images)


def read_per_image(path: Path):
    """The file as a DataFrame (``task``, ``path``, ``label``, ``top5`` as text, and
    ``wrong``: whether the first of the top 5 is not the label)."""
    import pandas as pd

    frame = pd.read_csv(
        path,
        sep="\t",
        dtype={"task": str, "path": str, "label": int, "top5": str},
        keep_default_na=False,
    )
    if list(frame.columns) != list(COLUMNS):
        raise ValueError(f"{path} has columns {list(frame.columns)}, not {list(COLUMNS)}")
    first = frame["top5"].str.split(" ", n=1).str[0].astype(int)
    return frame.assign(wrong=first != frame["label"])
