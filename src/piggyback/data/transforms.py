"""The two transform styles of the original code, a dataset attribute in the registry.

``cropped`` (CUBS, Cars: images already cropped to the object): resize to a square,
random horizontal flip for training. ``standard`` (Flowers, WikiArt, Sketch): resize
the shorter side to 256/224 of the crop size, random sized crop and flip for training,
centre crop for testing.

Both resize bilinearly and normalise with ImageNet's mean and std, as the paper's code
does: its backbones were trained so. A backbone whose weights were trained with other
preprocessing (torchvision's weights say theirs) can have the styles follow it instead:
its resize-to-crop ratio, interpolation and normalisation (``Preprocessing``).

The training crop of ``standard`` is drawn by one of two samplers (``crop``):
``2017`` (the default), torchvision 0.1.9's ``RandomSizedCrop``, which the authors
trained with, or ``modern``, today's ``RandomResizedCrop``, which draws the aspect ratio
log-uniformly, never swaps width and height, and falls back to a clamped central crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


class PreprocessingError(ValueError):
    """Preprocessing that cannot be had as asked; the message says what to give."""


@dataclass(frozen=True)
class Preprocessing:
    """What the styles take from a backbone's training: the shorter side ``standard``
    resizes to, as a multiple of the crop size, the interpolation, and the
    normalisation. The defaults are the paper's."""

    resize_ratio: float = 256 / 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def as_dict(self) -> dict:
        return {
            "resize_ratio": self.resize_ratio,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


PAPER_PREPROCESSING = Preprocessing()
TRANSFORM_STYLES = ("cropped", "standard")


@dataclass(frozen=True)
class TaskTransform:
    """How a task's images become the network's input: the transform style at the image
    size, with the backbone's preprocessing, and the random crop of the ``standard``
    style's train split. One value through every loader, cache and feed.

    Training records its test part (``as_dict``: the crop is the train split's only) in
    the checkpoint and packing in the packed file, so that a task is used as it was
    trained (predict, export) without the config at hand."""

    style: TransformStyle
    image_size: int
    preprocessing: Preprocessing = PAPER_PREPROCESSING
    crop: CropSampler = "2017"

    def build(self, train: bool) -> transforms.Compose:
        """The transform of the train split (augmented) or of the test split."""
        interpolation = InterpolationMode(self.preprocessing.interpolation)
        size = self.image_size
        normalize = [
            transforms.ToTensor(),
            transforms.Normalize(self.preprocessing.mean, self.preprocessing.std),
        ]
        if self.style == "cropped":
            steps = [transforms.Resize((size, size), interpolation)]
            if train:
                steps.append(transforms.RandomHorizontalFlip())
        elif self.style == "standard":
            resize = round(size * self.preprocessing.resize_ratio)
            if train:
                steps = [
                    transforms.Resize(resize, interpolation),
                    _random_crop(self.crop, size, interpolation),
                    transforms.RandomHorizontalFlip(),
                ]
            else:
                steps = [transforms.Resize(resize, interpolation), transforms.CenterCrop(size)]
        else:
            raise ValueError(
                f"unknown transform style {self.style!r}: expected 'cropped' or 'standard'"
            )
        return transforms.Compose(steps + normalize)

    def as_dict(self) -> dict:
        return {
            "transform": self.style,
            "image_size": self.image_size,
            **self.preprocessing.as_dict(),
        }

    @classmethod
    def from_dict(cls, fields: dict) -> TaskTransform:
        """The record ``as_dict`` wrote (a packed file's, a checkpoint's)."""
        try:
            preprocessing = Preprocessing(
                float(fields["resize_ratio"]),
                str(fields["interpolation"]),
                tuple(map(float, fields["mean"])),
                tuple(map(float, fields["std"])),
            )
            record = cls(fields["transform"], int(fields["image_size"]), preprocessing)
        except (KeyError, TypeError, ValueError) as error:
            raise PreprocessingError(f"not a preprocessing record: {fields!r}") from error
        if record.style not in TRANSFORM_STYLES:
            raise PreprocessingError(f"unknown transform style {record.style!r}")
        return record

    def steps(self) -> list[dict]:
        """The test transform in plain words, for a reader without this project: the
        resize (and centre crop), then the scaling to [0, 1] and the normalisation."""
        interpolation = self.preprocessing.interpolation
        if self.style == "cropped":
            size = [self.image_size, self.image_size]
            steps = [{"resize": size, "interpolation": interpolation}]
        else:
            shorter = round(self.image_size * self.preprocessing.resize_ratio)
            steps = [
                {"resize_shorter_side": shorter, "interpolation": interpolation},
                {"center_crop": [self.image_size, self.image_size]},
            ]
        mean, std = list(self.preprocessing.mean), list(self.preprocessing.std)
        return [
            {"convert": "RGB"},
            *steps,
            {"to_tensor": "channels first, values / 255"},
            {"normalize": {"mean": mean, "std": std}},
        ]


def weights_preprocessing(name: str) -> Preprocessing:
    """The preprocessing torchvision's weights ``<builder>.<ENUM>`` (e.g.
    ``convnext_tiny.IMAGENET1K_V1``) were trained with, from their ``transforms()``."""
    import torchvision

    builder, _, enum_name = name.partition(".")
    try:
        weights = torchvision.models.get_model_weights(builder)[enum_name]
    except (ValueError, KeyError):
        raise PreprocessingError(
            f"no torchvision weights {name!r}: give <builder>.<ENUM>, e.g. "
            "convnext_tiny.IMAGENET1K_V1"
        ) from None
    preset = weights.transforms()
    (crop,), (resize,) = preset.crop_size, preset.resize_size
    return Preprocessing(
        resize / crop, preset.interpolation.value, tuple(preset.mean), tuple(preset.std)
    )


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
    resized to size x size (bilinearly, as 0.1.9 did, unless the backbone's
    preprocessing says otherwise), or, when every try fails, ``Scale(size)`` then
    ``CenterCrop(size)`` of the whole image (today's ``Resize(size)``, which sizes the
    longer side as ``Scale`` did, and ``CenterCrop(size)``)."""

    def __init__(self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        crop = sized_crop_2017(height, width)
        if crop is None:
            return F.center_crop(F.resize(image, self.size, self.interpolation), self.size)
        top, left, crop_height, crop_width = crop
        size = [self.size, self.size]
        return F.resized_crop(image, top, left, crop_height, crop_width, size, self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def _random_crop(crop: CropSampler, image_size: int, interpolation: InterpolationMode):
    if crop == "2017":
        return RandomSizedCrop2017(image_size, interpolation)
    if crop == "modern":
        return transforms.RandomResizedCrop(image_size, interpolation=interpolation)
    raise ValueError(f"unknown crop sampler {crop!r}: expected one of {', '.join(CROP_SAMPLERS)}")
