"""The two transform styles of the original code, a dataset attribute in the registry.

``cropped`` (CUBS, Cars: images already cropped to the object): resize to a square,
random horizontal flip for training. ``standard`` (Flowers, WikiArt, Sketch): resize
the shorter side to 256/224 of the crop size, random resized crop and flip for
training, centre crop for testing.

Both resize bilinearly and normalise with ImageNet's mean and std, as the paper's code
does: its backbones were trained so. A backbone whose weights were trained with other
preprocessing (torchvision's weights say theirs) can have the styles follow it instead:
its resize-to-crop ratio, interpolation and normalisation (``Preprocessing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torchvision import transforms
from torchvision.transforms import InterpolationMode

TransformStyle = Literal["cropped", "standard"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def build_transform(
    style: TransformStyle,
    image_size: int,
    train: bool,
    preprocessing: Preprocessing = PAPER_PREPROCESSING,
) -> transforms.Compose:
    interpolation = InterpolationMode(preprocessing.interpolation)
    normalize = [
        transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std),
    ]
    if style == "cropped":
        steps = [transforms.Resize((image_size, image_size), interpolation)]
        if train:
            steps.append(transforms.RandomHorizontalFlip())
    elif style == "standard":
        resize = round(image_size * preprocessing.resize_ratio)
        if train:
            steps = [
                transforms.Resize(resize, interpolation),
                transforms.RandomResizedCrop(image_size, interpolation=interpolation),
                transforms.RandomHorizontalFlip(),
            ]
        else:
            steps = [transforms.Resize(resize, interpolation), transforms.CenterCrop(image_size)]
    else:
        raise ValueError(f"unknown transform style {style!r}: expected 'cropped' or 'standard'")
    return transforms.Compose(steps + normalize)
