"""Where a task's batches come from, for training and for evaluation alike: its decoded
cache, augmented on the device, when one is given, else its image folder through
DataLoader workers (docs/data-pipeline.md). Both ask here, so the choice is made once.
Either way a pass's order and augmentation depend only on the seed it is given."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from piggyback.data.cache.batches import cached_batches
from piggyback.data.cache.format import Cache, load_task_cache
from piggyback.data.datasets import TaskImageFolder, load_split, load_task_data, make_loader
from piggyback.data.images import SPLITS, check_class_count
from piggyback.data.transforms import TaskTransform


@dataclass
class TaskFeed:
    """A task's classes and its splits: cached, or as image folders."""

    classes: list[str]
    cache: Cache | None
    folders: dict[str, TaskImageFolder]
    device: torch.device
    workers: int
    transform: TaskTransform

    def batches(self, split: str, batch_size: int, seed: int) -> Iterable:
        """A pass over ``split``, iterable again and again: the train split shuffled and
        augmented as ``seed`` draws it, the test split in order."""
        train = split == "train"
        if self.cache is not None:
            crop = self.transform.crop
            return cached_batches(self.cache, batch_size, train, seed, self.device, crop=crop)
        return make_loader(self.folders[split], batch_size, train, seed, self.workers)

    def paths(self, split: str) -> list[str]:
        """Each image's path relative to the split folder, in the order a test pass gives
        them: the same names whether the images come from the cache or the folder."""
        if self.cache is not None:
            return list(self.cache.splits[split].paths)
        folder = self.folders[split]
        root = Path(folder.root)
        return [Path(path).relative_to(root).as_posix() for path, _ in folder.samples]


def open_task_feed(
    data: Path,
    transform: TaskTransform,
    cache: Path | None,
    device: torch.device,
    workers: int,
    classes: int | None = None,
    splits: tuple[str, ...] = SPLITS,
    log: Callable[[str], None] = print,
) -> TaskFeed:
    """The task's ``splits`` from ``cache`` if given (on ``device`` if it fits), else
    from the folder ``data``, as ``transform`` makes them; ``classes``, if given, is the
    class count to check."""
    if cache is not None:
        cached = load_task_cache(cache, transform, classes, device, splits, log)
        return TaskFeed(cached.classes, cached, {}, device, workers, transform)
    if splits == SPLITS:  # both splits, checked to share their classes
        train, test = load_task_data(data, transform, classes, log)
        folders = {"train": train, "test": test}
        return TaskFeed(train.classes, None, folders, device, workers, transform)
    folders = {split: load_split(data, split, transform, split == "train", log) for split in splits}
    found = folders[splits[0]].classes
    check_class_count(f"{data}: found", len(found), classes, "the data folder")
    return TaskFeed(found, None, folders, device, workers, transform)
