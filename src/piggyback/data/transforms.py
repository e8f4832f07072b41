"""The two transform styles of the original code, a dataset attribute in the registry.

``cropped`` (CUBS, Cars: images already cropped to the object): resize to a square,
random horizontal flip for training. ``standard`` (Flowers, WikiArt, Sketch): resize
the shorter side to 256/224 of the crop size, random resized crop and flip for
training, centre crop for testing.
"""

from __future__ import annotations

from typing import Literal

from torchvision import transforms

TransformStyle = Literal["cropped", "standard"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
