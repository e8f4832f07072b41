"""A decoded, pre-resized uint8 cache of a task's splits, and the random part of the
training transforms run on the device, so that the input pipeline never holds back a
GPU (docs/data-pipeline.md).

``build_transform`` (piggyback.data) is split in three: the deterministic steps in front
(``Resize``, ``CenterCrop``) run once, with torchvision and PIL, when the cache is built;
the random steps (``RandomResizedCrop``, ``RandomHorizontalFlip``) run per batch on the
device; ``ToTensor`` + ``Normalize`` become a 256-entry lookup table per channel, made by
those very transforms. What comes out:

- test batches are exactly torchvision's (same bytes cached, same lookup);
- train batches are exactly torchvision's for the same random draws: the crop parameters
  are drawn by ``RandomResizedCrop.get_params``'s algorithm, the flip as
  ``RandomHorizontalFlip`` does, in the same order, from a ``torch.Generator`` seeded
  per epoch; the crops are resized together by Pillow's own fixed-point bilinear
  arithmetic (integer gathers and multiply-adds, on the device). The draws come from
  another stream than a DataLoader worker's, so a run's augmentation is equal to the
  DataLoader path's in distribution, not image for image.

The cache is one safetensors file (no pickle) with a JSON description in its header.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from piggyback.atomic import atomic_write
from piggyback.data import (
    SPLITS,
    DataError,
    TransformStyle,
    build_transform,
    load_task_data,
    read_image,
)

FORMAT = "piggyback.cache"
VERSION = 1
PRECISION_BITS = 22  # Pillow's fixed-point coefficients for 8-bit images (Resample.c)
DETERMINISTIC_STEPS = (transforms.Resize, transforms.CenterCrop)
CACHE_TENSORS = ("pixels", "offsets", "shapes", "labels")


class CacheError(DataError):
    """A cache file that is missing, unreadable, or built for other settings."""


# -- what is cached, what runs per batch ------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """``build_transform(style, size, train)`` split into the cached steps, the random
    steps for the device, and the tensor conversion (``ToTensor`` + ``Normalize``)."""

    cached: transforms.Compose
    crop: transforms.RandomResizedCrop | None
    flip: float
    to_tensor: transforms.Compose

    def normalization_table(self) -> torch.Tensor:
        """(3, 256) float32: ``to_tensor`` of every byte value in every channel. A lookup
        in it is exactly ``ToTensor`` then ``Normalize``, which act on each value alone."""
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        return self.to_tensor(Image.fromarray(ramp, "RGB"))[:, 0, :].contiguous()


def plan(style: TransformStyle, image_size: int, train: bool) -> Plan:
    """Refuses a ``build_transform`` this module cannot reproduce exactly, so that a
    change there fails loudly here instead of silently training on other images."""
    steps = list(build_transform(style, image_size, train).transforms)
    cached = []
    while steps and isinstance(steps[0], DETERMINISTIC_STEPS):
        cached.append(steps.pop(0))
    crop = steps.pop(0) if steps and isinstance(steps[0], transforms.RandomResizedCrop) else None
    flip = 0.0
    if steps and isinstance(steps[0], transforms.RandomHorizontalFlip):
        flip = float(steps.pop(0).p)
    if [type(step) for step in steps] != [transforms.ToTensor, transforms.Normalize]:
        raise NotImplementedError(
            f"build_transform({style!r}, {image_size}, train={train}) has steps the cached "
            f"pipeline does not reproduce: {steps}"
        )
    if crop is not None and (
        crop.interpolation != InterpolationMode.BILINEAR
        or crop.antialias is False
        or tuple(crop.size) != (image_size, image_size)
    ):
        raise NotImplementedError(f"the cached pipeline resizes crops bilinearly only: {crop}")
    return Plan(transforms.Compose(cached), crop, flip, transforms.Compose(steps))


# -- the cache --------------------------------------------------------------------------


@dataclass
class CachedSplit:
    """A split's images as uint8 CHW, one after another in ``pixels`` (on any device);
    ``offsets``, ``shapes`` (height, width) and ``labels`` stay on the CPU."""

    pixels: torch.Tensor
    offsets: torch.Tensor
    shapes: torch.Tensor
    labels: torch.Tensor
    _offsets: list[int] = field(init=False, repr=False)
    _shapes: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = self.offsets.tolist()
        self._shapes = self.shapes.tolist()
        sizes = [3 * h * w for h, w in self._shapes]
        expected = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist() if sizes else []
        if (
            self.pixels.dtype != torch.uint8
            or len(self.labels) != len(sizes)
            or self._offsets != expected
            or self.pixels.numel() != sum(sizes)
        ):
            raise CacheError("inconsistent cache tensors (pixels, offsets, shapes, labels)")

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def shape(self, index: int) -> tuple[int, int]:
        height, width = self._shapes[index]
        return height, width

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a (3, height, width) view of ``pixels``."""
        height, width = self._shapes[index]
        start = self._offsets[index]
        return self.pixels[start : start + 3 * height * width].view(3, height, width)

    def stacked(self) -> torch.Tensor | None:
        """All images as one (N, 3, height, width) view, if they share one size."""
        if not self._shapes or any(shape != self._shapes[0] for shape in self._shapes):
            return None
        return self.pixels.view(len(self), 3, *self._shapes[0])

    def to(self, device: torch.device) -> CachedSplit:
        return CachedSplit(self.pixels.to(device), self.offsets, self.shapes, self.labels)


@dataclass
class Cache:
    classes: list[str]
    style: TransformStyle
    image_size: int
    splits: dict[str, CachedSplit]

    @property
    def nbytes(self) -> int:
        return sum(split.nbytes for split in self.splits.values())

    def to(self, device: torch.device) -> Cache:
        splits = {name: split.to(device) for name, split in self.splits.items()}
        return Cache(self.classes, self.style, self.image_size, splits)


def build_cache(
    root: Path,
    style: TransformStyle,
    image_size: int,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> Cache:
    """Decode both splits of ``root`` and apply the cached steps of their transforms."""
    train, test = load_task_data(Path(root), style, image_size, log=log)
    splits = {}
    for name, dataset in (("train", train), ("test", test)):
        steps = plan(style, image_size, name == "train").cached
        splits[name] = _decode_split(dataset.samples, steps, workers)
        log(
            f"{root}/{name}: {len(dataset)} images cached "
            f"({splits[name].nbytes / 2**20:.1f} MiB after {steps.transforms})"
        )
    return Cache(list(train.classes), style, image_size, splits)


def _decode_split(samples: list[tuple[str, int]], steps, workers: int) -> CachedSplit:
    def decode(path: str) -> np.ndarray:
        image = np.asarray(steps(read_image(path)))  # (height, width, 3) uint8
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(decode, [path for path, _ in samples]))
    shapes = torch.tensor([array.shape[1:] for array in arrays], dtype=torch.int64)
    sizes = [array.size for array in arrays]
    offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], dtype=torch.int64)
    # Filled image by image and each freed once copied: the buffer's pages are only
    # touched as they are written, so the peak stays near one copy of the split.
    pixels = torch.empty(sum(sizes), dtype=torch.uint8)
    for index, start in enumerate(offsets.tolist()):
        pixels[start : start + sizes[index]] = torch.from_numpy(arrays[index].reshape(-1))
        arrays[index] = None
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return CachedSplit(pixels, offsets, shapes, labels)


def _metadata(cache: Cache) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "classes": cache.classes,
        "style": cache.style,
        "image_size": cache.image_size,
        "images": {name: len(split) for name, split in cache.splits.items()},
        "cached_steps": {
            name: repr(plan(cache.style, cache.image_size, name == "train").cached)
            for name in cache.splits
        },
    }


def save_cache(cache: Cache, path: Path) -> None:
    """One safetensors file (no pickle), written atomically; the JSON description is
    in its header under ``piggyback.cache``."""
    tensors = {
        f"{name}.{key}": getattr(split, key).contiguous().cpu()
        for name, split in cache.splits.items()
        for key in CACHE_TENSORS
    }
    metadata = {FORMAT: json.dumps(_metadata(cache), sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_cache(
    root: Path,
    style: TransformStyle,
    image_size: int,
    out: Path,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Build and save; returns the JSON description."""
    cache = build_cache(root, style, image_size, workers, log)
    save_cache(cache, out)
    return _metadata(cache)


def read_metadata(path: Path) -> dict:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {})[FORMAT])
    except FileNotFoundError:
        raise CacheError(
            f"{path} does not exist: build it with `src/cache.py --data ... --out {path}` "
            "(the workflow's `cache` rule)"
        ) from None
    except (SafetensorError, KeyError, ValueError) as error:
        raise CacheError(
            f"{path} is not a readable dataset cache ({type(error).__name__}: {error}); "
            "delete it and build it again"
        ) from None
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise CacheError(f"{path} is not a version {VERSION} dataset cache; build it again")
    return metadata


def load_cache(path: Path, splits: tuple[str, ...] = SPLITS) -> Cache:
    """The cache in host memory, with ``splits`` only; refuses a cache whose cached steps
    are not those of today's ``build_transform`` (stale: build it again)."""
    metadata = read_metadata(path)
    style, image_size = metadata["style"], metadata["image_size"]
    loaded = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in splits:
                steps = repr(plan(style, image_size, name == "train").cached)
                if metadata["cached_steps"].get(name) != steps:
                    raise CacheError(
                        f"{path} was built with other {name} transforms than today's "
                        f"({metadata['cached_steps'].get(name)} instead of {steps}); "
                        "delete it and build it again"
                    )
                loaded[name] = CachedSplit(
                    *(handle.get_tensor(f"{name}.{key}") for key in CACHE_TENSORS)
                )
    except SafetensorError as error:
        raise CacheError(f"{path} is not a readable dataset cache ({error})") from None
    return Cache(metadata["classes"], style, image_size, loaded)


def place(
    cache: Cache, device: torch.device, share: float = 0.5, log: Callable[[str], None] = print
) -> Cache:
    """The cache's pixels on ``device`` if they fit in ``share`` of its free memory
    (batches are then gathered there); else they stay in host memory and each batch
    is copied over from pinned memory."""
    if device.type != "cuda":
        return cache
    free, _ = torch.cuda.mem_get_info(device)
    if cache.nbytes > share * free:
        log(
            f"dataset cache ({cache.nbytes / 2**30:.2f} GiB) stays in host memory: more "
            f"than {share:.0%} of the {free / 2**30:.1f} GiB free on {device}"
        )
        return cache
    return cache.to(device)


def load_task_cache(
    path: Path,
    style: TransformStyle,
    image_size: int,
    num_classes: int | None,
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
    log: Callable[[str], None] = print,
) -> Cache:
    """A task's cache, checked against the settings of the run, on ``device`` if it fits."""
    metadata = read_metadata(path)
    if (metadata["style"], metadata["image_size"]) != (style, image_size):
        raise CacheError(
            f"{path} was built for --transform {metadata['style']} --image-size "
            f"{metadata['image_size']}, not {style} {image_size}; build it for these"
        )
    if num_classes is not None and len(metadata["classes"]) != num_classes:
        raise CacheError(
            f"{path}: holds {len(metadata['classes'])} classes, the dataset registry says "
            f"{num_classes}; fix `classes:` in the config or rebuild the cache"
        )
    return place(load_cache(path, splits), device, log=log)


# -- random crop parameters, as torchvision draws them ---------------------------------


def crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``torchvision.transforms.RandomResizedCrop.get_params`` drawing from ``generator``:
    the same draws in the same order and arithmetic (10 tries, then the central crop), so
    the same random stream gives the same (top, left, height, width)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    low, high = log_ratio[0].item(), log_ratio[1].item()
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(low, high, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# -- Pillow's bilinear resize, batched ---------------------------------------------------


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


def _resample(
    pixels: torch.Tensor,
    lengths: torch.Tensor,
    out: int,
    dim: int,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Pillow pass along ``dim`` (2: rows, 3: columns) of (B, 3, rows, columns)
    images whose first ``lengths`` pixels along it are the image; output order reversed
    where ``flips``. Pillow's ``ImagingResample{Horizontal,Vertical}_8bpc``: a sum of
    pixel x coefficient from 2^21, shifted right by 22 bits, clipped to 0-255."""
    xmin, fixed = pil_coefficients(lengths, out)
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
    pass first: Pillow 13 does when the height loses more than twice as many pixels as
    the width; earlier versions never do."""
    if not _pillow_may_resize_vertically_first():
        return torch.zeros(len(sizes), dtype=torch.bool)
    height, width = sizes[:, 0], sizes[:, 1]
    return (height > out) & ((height - out) > 2 * (width - out))


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


# -- batches ------------------------------------------------------------------------------


class CachedBatches:
    """Batches of (normalised float32 images, int64 labels) on ``device`` from a cached
    split: the train split shuffled and augmented, the test split in order. Iterable
    again and again; each iteration draws from a generator seeded with ``seed``, so it
    is the same every time. With ``prefetch`` > 0 a background thread prepares that many
    batches ahead (on CUDA on a side stream), so the trainer never waits for them."""

    def __init__(
        self,
        cache: Cache,
        batch_size: int,
        train: bool,
        seed: int,
        device: torch.device,
        prefetch: int | None = None,
    ):
        self.split = cache.splits["train" if train else "test"]
        self.plan = plan(cache.style, cache.image_size, train)
        self.image_size = cache.image_size
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.prefetch = (2 if self.device.type == "cuda" else 0) if prefetch is None else prefetch
        self.table = self.plan.normalization_table().to(self.device)
        self.stacked = self.split.stacked()
        if self.plan.crop is None and self.stacked is None:
            raise CacheError("cached images of different sizes need a random crop to batch")

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.prefetch > 0:
            return _prefetched(self._batches, self.prefetch, self.device)
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        count = len(self.split)
        order = torch.randperm(count, generator=generator) if self.train else torch.arange(count)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.plan.crop is not None:
                pixels = self._crops(index.tolist(), generator)
            else:
                pixels = self._to_device(self._gather(index))
                if self.plan.flip:
                    flips = torch.rand(len(index), generator=generator) < self.plan.flip
                    flips = self._to_device(flips)[:, None, None, None]
                    pixels = torch.where(flips, pixels.flip(-1), pixels)
            yield self._normalize(pixels), self._to_device(self.split.labels[index])

    def _pinned(self) -> bool:
        return self.device.type == "cuda" and self.split.pixels.device.type == "cpu"

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor if tensor.is_pinned() else tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        stacked = self.stacked
        if stacked.device.type != "cpu":
            return stacked.index_select(0, index.to(stacked.device))
        if not self._pinned():
            return stacked.index_select(0, index)
        out = torch.empty((len(index), *stacked.shape[1:]), dtype=torch.uint8, pin_memory=True)
        return torch.index_select(stacked, 0, index, out=out)

    def _crops(self, index: list[int], generator: torch.Generator) -> torch.Tensor:
        """Per image, as Compose draws them: crop parameters, then the flip; then the
        crops, padded to one size, resized together."""
        params, flips = [], []
        for item in index:
            params.append(crop_params(*self.split.shape(item), generator, *self._crop_range))
            flips.append(bool(torch.rand(1, generator=generator) < self.plan.flip))
        sizes = torch.tensor([(h, w) for _, _, h, w in params], dtype=torch.int64)
        rows, cols = sizes.max(dim=0).values.tolist()
        crops = torch.zeros(
            (len(index), 3, rows, cols),
            dtype=torch.uint8,
            device=self.split.pixels.device,
            pin_memory=self._pinned(),
        )
        for slot, (item, (i, j, h, w)) in enumerate(zip(index, params, strict=True)):
            crops[slot, :, :h, :w] = self.split.image(item)[:, i : i + h, j : j + w]
        return resize_crops(self._to_device(crops), sizes, self.image_size, torch.tensor(flips))

    @property
    def _crop_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return tuple(self.plan.crop.scale), tuple(self.plan.crop.ratio)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        channel = torch.arange(3, device=pixels.device).view(1, 3, 1, 1) * 256
        return torch.take(self.table, pixels.to(torch.int64) + channel)


def cached_batches(
    cache: Cache | Path | str,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device | str,
    prefetch: int | None = None,
) -> CachedBatches:
    """Batches from a cache (or a cache file) on ``device``: see ``CachedBatches``."""
    if not isinstance(cache, Cache):
        cache = load_cache(Path(cache), ("train",) if train else ("test",))
    return CachedBatches(cache, batch_size, train, seed, torch.device(device), prefetch)


_DONE = object()


def _prefetched(
    make: Callable[[], Iterator], depth: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """``make()``'s items, produced by a background thread up to ``depth`` ahead. On CUDA
    the thread works on a side stream; the consumer's stream waits for each item."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for item in make():
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((item, event)):
                        return
            put((_DONE, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((error, None))

    thread = threading.Thread(target=work, name="cached-batches", daemon=True)
    thread.start()
    try:
        while True:
            item, event = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for tensor in item:
                    tensor.record_stream(current)
            yield item
    finally:
        stop.set()
        thread.join()


def add_cache_argument(parser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        help="decoded, pre-resized cache of --data (src/cache.py): batches come from it, "
        "augmented on the device, instead of from DataLoader workers (--workers unused)",
    )
