"""Predicting image files with a multi-task model: each image read as the datasets read
theirs (any mode converted to RGB), transformed as its task's test images were, and its
top-5 classes with their probabilities. A file that cannot be read is reported and
skipped; the rest go on."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from piggyback.data.images import IMAGE_EXTENSIONS, open_rgb
from piggyback.files.atomic import atomic_write
from piggyback.tasks.model import MultiTaskModel

TOP = 5


@dataclass(frozen=True)
class Prediction:
    """One image's top classes for one task, best first, with their probabilities."""

    path: str
    task: str
    classes: list[str]
    probabilities: list[float]


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be decoded as an image, and why."""

    path: str
    reason: str


def image_files(inputs: Iterable[Path]) -> list[Path]:
    """The files named, as given, and the image files under the folders named, walked in
    name order as the datasets' folders are (hidden files and files that are not images
    by their extension left out). A path that does not exist raises FileNotFoundError."""
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                files += [
                    Path(folder) / name
                    for name in sorted(names)
                    if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
                ]
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return files


def predict_files(
    model: MultiTaskModel,
    paths: Sequence[Path],
    tasks: Sequence[str],
    batch_size: int,
    progress: bool = False,
) -> Iterator[Prediction | Unreadable]:
    """Every image of ``paths`` for every task of ``tasks``, a batch of images at a time:
    each image's predictions in ``tasks`` order, images in ``paths`` order. Tasks run
    from the active one on, so a batch switches tasks ``len(tasks) - 1`` times."""
    device = next(model.backbone.parameters()).device
    with tqdm(total=len(paths), unit="image", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start : start + batch_size]:
                try:
                    images.append((str(path), open_rgb(path)))
                except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError...
                    yield Unreadable(str(path), f"{type(error).__name__}: {error}")
            ranked = {}
            for task in sorted(tasks, key=lambda task: task != model.active_task) if images else ():
                model.set_task(task)
                batch = torch.stack([model.preprocess(task, image) for _, image in images])
                with torch.inference_mode():
                    logits = model(batch.to(device)).float()
                ranked[task] = top_classes(logits, model.tasks[task].classes)
            for index, (path, _) in enumerate(images):
                for task in tasks:
                    classes, probabilities = ranked[task][index]
                    yield Prediction(path, task, classes, probabilities)
            bar.update(len(paths[start : start + batch_size]))


def top_classes(logits: torch.Tensor, classes: list[str]) -> list[tuple[list[str], list[float]]]:
    """Per row, the top classes ranked by logit as evaluation ranks them, with their
    softmax probabilities."""
    ranks = logits.topk(min(TOP, logits.shape[1]), dim=1).indices
    probabilities = logits.softmax(dim=1).gather(1, ranks)
    return [
        ([classes[i] for i in row], [float(p) for p in chances])
        for row, chances in zip(ranks.tolist(), probabilities, strict=True)
    ]


def describe(prediction: Prediction) -> str:
    """One line: the path, the task, and each class with its probability in percent."""
    top = ", ".join(
        f"{name} {100 * p:.1f}%"
        for name, p in zip(prediction.classes, prediction.probabilities, strict=True)
    )
    return f"{prediction.path} [{prediction.task}]: {top}"


def write_predictions(predictions: Iterable[Prediction], out: Path) -> None:
    """A TSV, atomically: path, task, then each of the top classes and its probability."""
    columns = ["path", "task"]
    for rank in range(1, TOP + 1):
        columns += [f"class_{rank}", f"probability_{rank}"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for prediction in predictions:
                row = [prediction.path, prediction.task]
                pairs = zip(prediction.classes, prediction.probabilities, strict=True)
                for name, probability in pairs:
                    row += [name, f"{probability:.6g}"]
                writer.writerow(row + [""] * (len(columns) - len(row)))  # fewer than 5 classes

    atomic_write(Path(out), write)
