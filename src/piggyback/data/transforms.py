"""The two transform styles of the original code, a dataset attribute in the registry.

``cropped`` (CUBS, Cars: images already cropped to the object): resize to a square,
random horizontal flip for training. ``standard`` (Flowers, WikiArt, Sketch): resize
the shorter side to 256/224 of the crop size, random sized crop and flip for training,
centre crop for testing.

The training crop of ``standard`` is drawn by one of two samplers (``crop``):
``2017`` (the default), torchvision 0.1.9's ``RandomSizedCrop``, which the authors
trained with, or ``modern``, today's ``RandomResizedCrop``, which draws the aspect ratio
log-uniformly, never swaps width and height, and falls back to a clamped central crop.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

TransformStyle = Literal["cropped", "standard"]
CropSampler = Literal["2017", "modern"]
CROP_SAMPLERS = ("2017", "modern")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision 0.1.9's RandomSizedCrop: its area fractions, aspect ratios and tries
AREA_2017 = (0.08, 1.0)
RATIO_2017 = (3 / 4, 4 / 3)
TRIES_2017 = 10


def sized_crop_2017(
    height: int, width: int, generator: torch.Generator | None = None
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of a crop drawn as torchvision 0.1.9's
    ``RandomSizedCrop`` draws it, from ``generator`` (default: torch's global stream, as
    in a DataLoader worker), or None when all its tries fail and it falls back.

    Each try draws an area fraction uniformly in [0.08, 1] of the image's area, an aspect
    ratio (width over height) uniformly in [3/4, 4/3], and a fair coin that swaps the
    crop's width and height; a crop that fits is placed uniformly, left then top."""
    area = height * width
    for _ in range(TRIES_2017):
        target = area * torch.empty(1).uniform_(*AREA_2017, generator=generator).item()
        ratio = torch.empty(1).uniform_(*RATIO_2017, generator=generator).item()
        crop_width = int(round(math.sqrt(target * ratio)))
        crop_height = int(round(math.sqrt(target / ratio)))
        if torch.rand(1, generator=generator).item() < 0.5:
            crop_width, crop_height = crop_height, crop_width
        # a crop of no pixels cannot be resized (0.1.9 would fail on it): tried again
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = torch.randint(0, width - crop_width + 1, (1,), generator=generator).item()
            top = torch.randint(0, height - crop_height + 1, (1,), generator=generator).item()
            return top, left, crop_height, crop_width
    return None


class RandomSizedCrop2017:
    """torchvision 0.1.9's ``RandomSizedCrop(size)`` on a PIL image: the drawn crop
    resized bilinearly to size x size, or, when every try fails, ``Scale(size)`` then
    ``CenterCrop(size)`` of the whole image (today's ``Resize(size)``, which sizes the
    longer side as ``Scale`` did, and ``CenterCrop(size)``)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        crop = sized_crop_2017(height, width)
        if crop is None:
            return F.center_crop(F.resize(image, self.size), self.size)
        top, left, crop_height, crop_width = crop
        size = [self.size, self.size]
        return F.resized_crop(
            image, top, left, crop_height, crop_width, size, InterpolationMode.BILINEAR
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def build_transform(
    style: TransformStyle, image_size: int, train: bool, crop: CropSampler = "2017"
) -> transforms.Compose:
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
                _random_crop(crop, image_size),
                transforms.RandomHorizontalFlip(),
            ]
        else:
            steps = [transforms.Resize(resize), transforms.CenterCrop(image_size)]
    else:
        raise ValueError(f"unknown transform style {style!r}: expected 'cropped' or 'standard'")
    return transforms.Compose(steps + normalize)


def _random_crop(crop: CropSampler, image_size: int):
    if crop == "2017":
        return RandomSizedCrop2017(image_size)
    if crop == "modern":
        return transforms.RandomResizedCrop(image_size)
    raise ValueError(f"unknown crop sampler {crop!r}: expected one of {', '.join(CROP_SAMPLERS)}")
