"""ImageFolder splits and the two transform styles of the original code.

``cropped`` (CUBS, Cars: images already cropped to the object): resize to a square,
random horizontal flip for training. ``standard`` (Flowers, WikiArt, Sketch): resize
the shorter side to 256/224 of the crop size, random resized crop and flip for
training, centre crop for testing. The style is a dataset attribute in the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

TransformStyle = Literal["cropped", "standard"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")


class DataError(ValueError):
    """The data on disk is not what the config says; the message names the folder."""


def build_transform(style: TransformStyle, image_size: int, train: bool) -> transforms.Compose:
    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if style == "cropped":
        steps = [transforms.Resize((image_size, image_size))]
        if train:
            steps.append(transforms.RandomHorizontalFlip())
    elif style == "standard":
        resize = round(image_size * 256 / 224)
        if train:
            steps = [
                transforms.Resize(resize),
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
            ]
        else:
            steps = [transforms.Resize(resize), transforms.CenterCrop(image_size)]
    else:
        raise ValueError(f"unknown transform style {style!r}: expected 'cropped' or 'standard'")
    return transforms.Compose(steps + normalize)


def load_split(
    root: Path, split: str, style: TransformStyle, image_size: int, train: bool
) -> datasets.ImageFolder:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: expected {root}/<split>/<class>/<image>")
    return datasets.ImageFolder(str(folder), transform=build_transform(style, image_size, train))


def load_task_data(
    root: Path, style: TransformStyle, image_size: int, num_classes: int | None = None
) -> tuple[datasets.ImageFolder, datasets.ImageFolder]:
    """Train and test splits, checked to share one class list (and its expected size)."""
    train = load_split(root, "train", style, image_size, train=True)
    test = load_split(root, "test", style, image_size, train=False)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DataError(
            f"{root}: train/ and test/ have different classes "
            f"(only in train/: {only_train[:5]}, only in test/: {only_test[:5]})"
        )
    if num_classes is not None and len(train.classes) != num_classes:
        raise DataError(
            f"{root}: found {len(train.classes)} classes, the dataset registry says "
            f"{num_classes}; fix `classes:` in the config or the data folder"
        )
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
