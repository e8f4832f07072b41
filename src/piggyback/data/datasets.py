"""A task's ImageFolder splits, and the loaders that batch them: the images are listed
as :mod:`piggyback.data.images` lists them, and transformed by
:mod:`piggyback.data.transforms`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from piggyback.data.images import DataError, check_class_count, read_image, scan_split
from piggyback.data.transforms import TaskTransform


class TaskImageFolder(datasets.VisionDataset):
    """A split as torchvision's ``ImageFolder`` reads it, but listed by
    :func:`~piggyback.data.images.scan_split` (hidden folders ignored, files that are not
    images skipped and counted, empty classes refused by name) and read with
    ``read_image``."""

    def __init__(self, root: Path, transform=None):
        super().__init__(str(root), transform=transform)
        split = scan_split(Path(root))
        self.classes, self.samples, self.skipped = split.classes, split.samples, split.skipped
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.targets = [target for _, target in self.samples]

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform is not None else image), target

    def __len__(self) -> int:
        return len(self.samples)


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
