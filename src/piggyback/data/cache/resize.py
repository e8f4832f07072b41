"""Pillow's bilinear resize, batched on the device and bit-exact: the crops of a training
batch are resized together by Pillow's own fixed-point arithmetic (integer gathers and
multiply-adds), so a cached batch equals torchvision's for the same random draws; so is
the 2017 sampler's fallback, a resize of the whole image and its centre."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from PIL import Image

PRECISION_BITS = 22  # Pillow's fixed-point coefficients for 8-bit images (Resample.c)


def pil_coefficients(lengths: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's bilinear (antialiased) resampling of inputs of ``lengths`` to ``out``:
    per input and output pixel, the first input pixel (``xmin``, (B, out)) and the
    fixed-point coefficients of the window from there (B, out, K), computed with the
    same double arithmetic as Resample.c's ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``."""
    size = lengths.to(torch.float64)[:, None]
    scale = size / out
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # bilinear: support 1.0
    inverse = 1.0 / filterscale
    center = (torch.arange(out, dtype=torch.float64) + 0.5)[None, :] * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0.0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), size)
    count = xmax - xmin
    taps = int(math.ceil(support.max().item())) * 2 + 1
    position = xmin[..., None] + torch.arange(taps, dtype=torch.float64)
    distance = (((position - center[..., None]) + 0.5) * inverse[..., None]).abs()
    weights = torch.where(distance < 1.0, 1.0 - distance, 0.0)
    weights = torch.where(torch.arange(taps) < count[..., None], weights, 0.0)
    total = torch.zeros_like(center)
    for tap in range(taps):  # Pillow's summation order
        total = total + weights[..., tap]
    weights = torch.where(total[..., None] != 0.0, weights / total[..., None], weights)
    fixed = torch.floor(weights * float(1 << PRECISION_BITS) + 0.5)
    return xmin.to(torch.int64), fixed.to(torch.int64)


def resize_crops(
    crops: torch.Tensor, sizes: torch.Tensor, out: int, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Resize each crop ``crops[b, :, :h, :w]`` ((h, w) = ``sizes[b]``, CPU) to out x out,
    bit-exactly as Pillow's bilinear ``resize`` of that crop (one pass per axis in
    Pillow's order, each rounding to 8 bits), then mirror where ``flips``; int32 0-255.

    A pass is Pillow's integer arithmetic, batched: per output pixel, a few gathered
    input pixels times their fixed-point coefficients, summed in int32."""
    order = vertical_first(sizes, out)
    groups = [(~order).nonzero().flatten(), order.nonzero().flatten()]
    if not all(len(group) for group in groups):  # one order for the whole batch
        return _resize(crops, sizes, out, flips, bool(order.any()))
    result = torch.empty((len(crops), 3, out, out), dtype=torch.int32, device=crops.device)
    for down_first, group in enumerate(groups):
        index = group.to(crops.device)
        picked = None if flips is None else flips[group]
        resized = _resize(crops.index_select(0, index), sizes[group], out, picked, bool(down_first))
        result.index_copy_(0, index, resized)
    return result


def _resize(
    crops: torch.Tensor, sizes: torch.Tensor, out: int, flips: torch.Tensor | None, down_first
) -> torch.Tensor:
    if down_first:
        down = _resample(crops, sizes[:, 0], out, dim=2)
        return _resample(down, sizes[:, 1], out, dim=3, flips=flips)
    across = _resample(crops, sizes[:, 1], out, dim=3, flips=flips)
    return _resample(across, sizes[:, 0], out, dim=2)


def resize_and_center_crop(image: torch.Tensor, out: int) -> torch.Tensor:
    """``CenterCrop(out)`` of ``Resize(out)`` of a (3, height, width) image, bit-exactly
    as torchvision does them on a PIL image: the shorter side resized to ``out`` and the
    longer to ``int(out * long / short)`` by Pillow's two passes (in its order), then
    the centre out x out kept, as ``round((length - out) / 2)`` places it; int32.

    Each pass computes only the output pixels the window keeps, which are the same as
    the full pass's: Pillow computes every output pixel from its own input window."""
    _, height, width = image.shape
    if height <= width:
        rows, cols = out, int(out * width / height)
    else:
        rows, cols = int(out * height / width), out
    top, left = int(round((rows - out) / 2.0)), int(round((cols - out) / 2.0))
    passes = [(3, width, cols, left), (2, height, rows, top)]
    if _pillow_may_resize_vertically_first() and _loses_more_height(height, width, rows, cols):
        passes.reverse()
    pixels = image[None]
    for dim, length, size, start in passes:
        pixels = _resample(pixels, torch.tensor([length]), size, dim, window=(start, out))
    return pixels[0]


def _resample(
    pixels: torch.Tensor,
    lengths: torch.Tensor,
    out: int,
    dim: int,
    flips: torch.Tensor | None = None,
    window: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One Pillow pass along ``dim`` (2: rows, 3: columns) of (B, 3, rows, columns)
    images whose first ``lengths`` pixels along it are the image; output order reversed
    where ``flips``; only the output pixels of ``window`` (first, count), if given.
    Pillow's ``ImagingResample{Horizontal,Vertical}_8bpc``: a sum of pixel x coefficient
    from 2^21, shifted right by 22 bits, clipped to 0-255."""
    xmin, fixed = pil_coefficients(lengths, out)
    if window is not None:
        first, out = window
        xmin, fixed = xmin[:, first : first + out], fixed[:, first : first + out]
    if flips is not None:
        xmin = torch.where(flips[:, None], xmin.flip(1), xmin)
        fixed = torch.where(flips[:, None, None], fixed.flip(1), fixed)
    taps = fixed.shape[-1]
    # past a window's end the coefficients are 0: any valid index will do there
    index = (xmin[..., None] + torch.arange(taps)).clamp(max=pixels.shape[dim] - 1)
    index = index.to(pixels.device, torch.int64)
    fixed = fixed.to(pixels.device, torch.int32)
    shape = list(pixels.shape)
    shape[dim] = out
    view = (len(pixels), 1, out, 1) if dim == 2 else (len(pixels), 1, 1, out)
    total = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=pixels.device)
    for tap in range(taps):
        taken = pixels.gather(dim, index[..., tap].view(view).expand(shape))
        total += taken.to(torch.int32) * fixed[..., tap].view(view)
    return (total >> PRECISION_BITS).clamp_(0, 255)


def vertical_first(sizes: torch.Tensor, out: int) -> torch.Tensor:
    """Per (height, width) in ``sizes``, whether Pillow resizes it to out x out vertical
    pass first."""
    if not _pillow_may_resize_vertically_first():
        return torch.zeros(len(sizes), dtype=torch.bool)
    return _loses_more_height(sizes[:, 0], sizes[:, 1], out, out)


def _loses_more_height(height, width, rows, cols):
    """Pillow 13's choice of the vertical pass first, resizing (height, width) to
    (rows, cols): when the height shrinks, by more than twice as many pixels as the
    width loses (earlier Pillows never do)."""
    return (height > rows) & ((height - rows) > 2 * (width - cols))


@functools.cache
def _pillow_may_resize_vertically_first() -> bool:
    """Tried on an image where the two orders give different bytes."""
    bilinear = Image.Resampling.BILINEAR
    rng = np.random.default_rng(0)
    for _ in range(16):
        image = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "RGB")
        full = np.asarray(image.resize((11, 3), bilinear))
        across = np.asarray(image.resize((11, 12), bilinear).resize((11, 3), bilinear))
        down = np.asarray(image.resize((12, 3), bilinear).resize((11, 3), bilinear))
        if np.array_equal(across, down):
            continue
        if np.array_equal(full, down):
            return True
        if not np.array_equal(full, across):
            warnings.warn(
                "this Pillow's bilinear resize is neither of the two known ones: augmented "
                "training images may differ from torchvision's by a grey level",
                stacklevel=2,
            )
        return False
    return False
