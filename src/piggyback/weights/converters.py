"""Weights published for another framework, converted into a torchvision model's state
dict: one registry entry per converter, named by an arch's ``weights: {convert: ...}``.

An entry says which torchvision builder the weights fill, how its file is read (never by
running code the file names) and how it is converted, so that a new converter is one
entry in ``CONVERTERS``. NumPy only: the config check lists the converters without
importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from piggyback.files.restricted_pickle import load_numpy_pickle

# torchvision's ImageNet normalisation of RGB pixels in [0, 1] (its transforms' and this
# project's `paper` transforms' mean and std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What DeepScale's SqueezeNet v1.1 was trained on in Caffe: BGR pixels in 0-255 less this
# per-channel mean (B, G, R), the `mean_value`s of its train_val.prototxt. The other mean
# in circulation for these weights, 104.006, 116.669, 122.679 (Orange's embedder), is the
# channel average of Caffe's ilsvrc_2012_mean.npy, VGG's mean image: the network never
# saw it. It differs from the training mean by under 0.4 of 255, which moves the logits
# by a few hundredths (at most 0.07 on scikit-image's photos; README, "Weights from a
# package").
CAFFE_SQUEEZENET_BGR_MEAN = (104.0, 117.0, 123.0)

# Caffe's Fire modules and where torchvision's squeezenet1_1 keeps them.
_FIRE_MODULES = dict(
    zip((f"fire{n}" for n in range(2, 10)), (3, 4, 6, 7, 9, 10, 11, 12), strict=True)
)
_FIRE_CONVS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}


class ConversionError(ValueError):
    """The file's content is not what the converter converts; the message names the
    file and the layer."""


@dataclass(frozen=True)
class Converter:
    """How one kind of published weights becomes a torchvision state dict."""

    builder: str  # the torchvision builder whose state dict it writes
    read: Callable[[bytes, str], Any]  # (file bytes, a name for messages) -> content
    convert: Callable[[Any, str], dict[str, np.ndarray]]  # (content, name) -> state dict
    input: str  # the preprocessing the converted weights expect, for the record


def caffe_squeezenet_names() -> dict[str, str]:
    """Caffe's layer names and the torchvision modules they become."""
    names = {"conv1": "features.0"}
    for fire, index in _FIRE_MODULES.items():
        for caffe, module in _FIRE_CONVS.items():
            names[f"{fire}/{caffe}"] = f"features.{index}.{module}"
    names["conv10"] = "classifier.1"
    return names


def caffe_squeezenet(layers: Any, what: str) -> dict[str, np.ndarray]:
    """DeepScale's Caffe SqueezeNet v1.1 (a dict ``layer -> [kernel (H, W, in, out),
    bias]``) as torchvision's squeezenet1_1 state dict, ImageNet head included, with
    Caffe's input preprocessing folded into ``features.0``: the converted model reads
    torchvision-normalised RGB images and gives the Caffe model's logits."""
    names = caffe_squeezenet_names()
    if not isinstance(layers, dict) or set(layers) != set(names):
        found = sorted(layers) if isinstance(layers, dict) else type(layers).__name__
        raise ConversionError(
            f"{what} does not hold SqueezeNet v1.1's {len(names)} Caffe layers "
            f"(conv1, fire2/squeeze1x1 ... conv10): it holds {str(found)[:200]}"
        )
    state = {}
    for caffe, module in names.items():
        kernel, bias = _kernel_and_bias(layers[caffe], f"{what}: layer {caffe}")
        state[f"{module}.weight"] = kernel.transpose(3, 2, 0, 1)  # (out, in, H, W)
        state[f"{module}.bias"] = bias
    state["features.0.weight"], state["features.0.bias"] = fold_caffe_input(
        state["features.0.weight"], state["features.0.bias"], CAFFE_SQUEEZENET_BGR_MEAN
    )
    return {name: np.ascontiguousarray(value, np.float32) for name, value in state.items()}


def fold_caffe_input(
    weight: np.ndarray,
    bias: np.ndarray,
    bgr_mean: tuple[float, float, float],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """A first convolution that reads Caffe's input (BGR, 0-255, ``bgr_mean``
    subtracted) rewritten to read torchvision's (RGB in [0, 1], less ``mean``, over
    ``std``) and give the same output. Exact only for a convolution without padding: a
    padded border is zero in one input and not in the other.

    Caffe's channel of RGB channel c holds 255 p - m_c for a pixel p in [0, 1], and
    p = std_c x + mean_c for torchvision's x: so 255 std_c x + (255 mean_c - m_c), a
    scale that goes into the weight and a constant that goes into the bias."""
    weight_rgb = weight.astype(np.float64)[:, ::-1]  # input channels B, G, R -> R, G, B
    rgb_mean = np.asarray(bgr_mean, np.float64)[::-1]
    scale = 255 * np.asarray(std, np.float64)
    shift = 255 * np.asarray(mean, np.float64) - rgb_mean
    folded = weight_rgb * scale[None, :, None, None]
    folded_bias = bias.astype(np.float64) + np.einsum("oihw,i->o", weight_rgb, shift)
    return folded.astype(np.float32), folded_bias.astype(np.float32)


def _kernel_and_bias(layer: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(layer, list | tuple) and len(layer) == 2):
        raise ConversionError(f"{what} is not a [kernel, bias] pair")
    kernel, bias = layer
    if not (isinstance(kernel, np.ndarray) and isinstance(bias, np.ndarray)):
        raise ConversionError(f"{what} is not a pair of arrays")
    if kernel.ndim != 4 or bias.shape != kernel.shape[3:]:
        raise ConversionError(
            f"{what} has a kernel of shape {kernel.shape} and a bias of shape {bias.shape}, "
            "not (H, W, in, out) and (out,)"
        )
    if not (np.issubdtype(kernel.dtype, np.floating) and np.issubdtype(bias.dtype, np.floating)):
        raise ConversionError(f"{what} holds {kernel.dtype}/{bias.dtype}, not floating point")
    return kernel, bias


CONVERTERS: dict[str, Converter] = {
    "caffe_squeezenet": Converter(
        builder="squeezenet1_1",
        read=load_numpy_pickle,
        convert=caffe_squeezenet,
        input=(
            "torchvision's ImageNet normalisation of RGB in [0, 1] (mean "
            f"{IMAGENET_MEAN}, std {IMAGENET_STD}); Caffe's BGR 0-255 input less "
            f"{CAFFE_SQUEEZENET_BGR_MEAN} (B, G, R) folded into features.0"
        ),
    ),
}
