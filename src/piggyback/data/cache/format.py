"""The dataset cache: a task's splits decoded once, after the deterministic part of their
transforms, as uint8 images in one safetensors file (no pickle) with a JSON description
in its header (docs/data-pipeline.md).

``TaskTransform.build`` (piggyback.data.transforms) is split in three by ``plan``: the
deterministic steps in front (``Resize``, ``CenterCrop``) run once, with torchvision and
PIL, when the cache is built; the random steps (the random crop, ``RandomHorizontalFlip``)
run per batch on the device (:mod:`piggyback.data.cache.batches`);
``ToTensor`` + ``Normalize`` become a 256-entry lookup table per channel, made by those
very transforms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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

from piggyback.data.datasets import load_task_data
from piggyback.data.images import SPLITS, DataError, check_class_count, read_image
from piggyback.data.transforms import (
    PAPER_PREPROCESSING,
    Preprocessing,
    RandomSizedCrop2017,
    TaskTransform,
)
from piggyback.files.atomic import atomic_write

FORMAT = "piggyback.cache"
PATHS = "piggyback.cache.paths"  # per split, each image's path relative to its split folder
VERSION = 2  # 2: the images' paths (per-image evaluation results name the images by them)


DETERMINISTIC_STEPS = (transforms.Resize, transforms.CenterCrop)
RANDOM_CROPS = (RandomSizedCrop2017, transforms.RandomResizedCrop)
CACHE_TENSORS = ("pixels", "offsets", "shapes", "labels")


class CacheError(DataError):
    """A cache file that is missing, unreadable, or built for other settings."""


# -- what is cached, what runs per batch ------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """``TaskTransform.build(train)`` split into the cached steps, the random
    steps for the device, and the tensor conversion (``ToTensor`` + ``Normalize``)."""

    cached: transforms.Compose
    crop: RandomSizedCrop2017 | transforms.RandomResizedCrop | None
    flip: float
    to_tensor: transforms.Compose

    def normalization_table(self) -> torch.Tensor:
        """(3, 256) float32: ``to_tensor`` of every byte value in every channel. A lookup
        in it is exactly ``ToTensor`` then ``Normalize``, which act on each value alone."""
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        return self.to_tensor(Image.fromarray(ramp, "RGB"))[:, 0, :].contiguous()


def plan(transform: TaskTransform, train: bool) -> Plan:
    """Refuses a transform this module cannot reproduce exactly, so that a change in
    ``TaskTransform.build`` fails loudly here instead of silently training on other
    images. The crop sampler changes only the random steps: one cache serves both."""
    preprocessing = transform.preprocessing
    if preprocessing.interpolation != InterpolationMode.BILINEAR.value:
        raise CacheError(
            f"the cached pipeline resizes as Pillow's bilinear filter does, but these "
            f"transforms resize with {preprocessing.interpolation} (the backbone's weights' "
            "own preprocessing, `transforms: weights`): train this arch with "
            "`compute: {data_pipeline: dataloader}`"
        )
    steps = list(transform.build(train).transforms)
    cached = []
    while steps and isinstance(steps[0], DETERMINISTIC_STEPS):
        cached.append(steps.pop(0))
    crop = steps.pop(0) if steps and isinstance(steps[0], RANDOM_CROPS) else None
    flip = 0.0
    if steps and isinstance(steps[0], transforms.RandomHorizontalFlip):
        flip = float(steps.pop(0).p)
    if [type(step) for step in steps] != [transforms.ToTensor, transforms.Normalize]:
        raise NotImplementedError(
            f"{transform}.build(train={train}) has steps the cached "
            f"pipeline does not reproduce: {steps}"
        )
    if isinstance(crop, transforms.RandomResizedCrop) and (
        crop.interpolation != InterpolationMode.BILINEAR
        or crop.antialias is False
        or tuple(crop.size) != (transform.image_size, transform.image_size)
    ):
        raise NotImplementedError(f"the cached pipeline resizes crops bilinearly only: {crop}")
    return Plan(transforms.Compose(cached), crop, flip, transforms.Compose(steps))


# -- the cache --------------------------------------------------------------------------


@dataclass
class CachedSplit:
    """A split's images as uint8 CHW, one after another in ``pixels`` (on any device);
    ``offsets``, ``shapes`` (height, width) and ``labels`` stay on the CPU, and ``paths``
    names each image relative to the split folder (as the DataLoader path's results do)."""

    pixels: torch.Tensor
    offsets: torch.Tensor
    shapes: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
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
            or len(self.paths) != len(sizes)
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
        return CachedSplit(
            self.pixels.to(device), self.offsets, self.shapes, self.labels, self.paths
        )


@dataclass
class Cache:
    classes: list[str]
    transform: TaskTransform  # what it was built for (its crop sampler: the default)
    splits: dict[str, CachedSplit]

    @property
    def nbytes(self) -> int:
        return sum(split.nbytes for split in self.splits.values())

    def to(self, device: torch.device) -> Cache:
        splits = {name: split.to(device) for name, split in self.splits.items()}
        return Cache(self.classes, self.transform, splits)


def build_cache(
    root: Path, transform: TaskTransform, workers: int = 1, log: Callable[[str], None] = print
) -> Cache:
    """Decode both splits of ``root`` and apply the cached steps of their transforms."""
    transform = TaskTransform(transform.style, transform.image_size, transform.preprocessing)
    train, test = load_task_data(Path(root), transform, log=log)
    splits = {}
    for name, dataset in (("train", train), ("test", test)):
        steps = plan(transform, name == "train").cached
        splits[name] = _decode_split(dataset.samples, Path(dataset.root), steps, workers)
        log(
            f"{root}/{name}: {len(dataset)} images cached "
            f"({splits[name].nbytes / 2**20:.1f} MiB after {steps.transforms})"
        )
    return Cache(list(train.classes), transform, splits)


def _decode_split(samples: list[tuple[str, int]], root: Path, steps, workers: int) -> CachedSplit:
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
    paths = [Path(path).relative_to(root).as_posix() for path, _ in samples]
    return CachedSplit(pixels, offsets, shapes, labels, paths)


def _metadata(cache: Cache) -> dict:
    """The description in the file's header; ``preprocessing`` only where it is not the
    paper's, so that the paper's caches read as before."""
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "classes": cache.classes,
        "style": cache.transform.style,
        "image_size": cache.transform.image_size,
        "images": {name: len(split) for name, split in cache.splits.items()},
        "cached_steps": {name: repr(_cached_steps(cache.transform, name)) for name in cache.splits},
    }
    if cache.transform.preprocessing != PAPER_PREPROCESSING:
        metadata["preprocessing"] = cache.transform.preprocessing.as_dict()
    return metadata


def _cached_steps(transform: TaskTransform, split: str):
    return plan(transform, split == "train").cached


def _preprocessing(metadata: dict) -> Preprocessing:
    if "preprocessing" not in metadata:
        return PAPER_PREPROCESSING
    described = metadata["preprocessing"]
    return Preprocessing(
        described["resize_ratio"],
        described["interpolation"],
        tuple(described["mean"]),
        tuple(described["std"]),
    )


def save_cache(cache: Cache, path: Path) -> None:
    """One safetensors file (no pickle), written atomically; the JSON description is
    in its header under ``piggyback.cache``."""
    tensors = {
        f"{name}.{key}": getattr(split, key).contiguous().cpu()
        for name, split in cache.splits.items()
        for key in CACHE_TENSORS
    }
    paths = {name: split.paths for name, split in cache.splits.items()}
    metadata = {
        FORMAT: json.dumps(_metadata(cache), sort_keys=True),
        PATHS: json.dumps(paths, separators=(",", ":")),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_cache(
    root: Path,
    transform: TaskTransform,
    out: Path,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Build and save; returns the JSON description."""
    cache = build_cache(root, transform, workers, log)
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
    if metadata.get("format") != FORMAT:
        raise CacheError(f"{path} is not a dataset cache; delete it and build it again")
    if metadata.get("version") != VERSION:
        raise CacheError(
            f"{path} is a version {metadata.get('version')} dataset cache, and this code reads "
            f"version {VERSION} (which records each image's path, for the per-image results): "
            "delete it and rebuild the cache (the workflow's `cache` rule does, once it is gone)"
        )
    return metadata


def load_cache(path: Path, splits: tuple[str, ...] = SPLITS) -> Cache:
    """The cache in host memory, with ``splits`` only; refuses a cache whose cached steps
    are not those of today's ``TaskTransform.build`` (stale: build it again)."""
    metadata = read_metadata(path)
    transform = TaskTransform(metadata["style"], metadata["image_size"], _preprocessing(metadata))
    for name in splits:
        steps = repr(_cached_steps(transform, name))
        if metadata["cached_steps"].get(name) != steps:
            raise CacheError(
                f"{path} was built with other {name} transforms than today's "
                f"({metadata['cached_steps'].get(name)} instead of {steps}); "
                "delete it and build it again"
            )
    paths = _read_paths(path)
    loaded = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in splits:
                loaded[name] = CachedSplit(
                    *(handle.get_tensor(f"{name}.{key}") for key in CACHE_TENSORS), paths[name]
                )
    except SafetensorError as error:
        raise CacheError(f"{path} is not a readable dataset cache ({error})") from None
    return Cache(metadata["classes"], transform, loaded)


def _read_paths(path: Path) -> dict[str, list[str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads(handle.metadata()[PATHS])
    except (SafetensorError, KeyError, ValueError) as error:
        raise CacheError(
            f"{path} holds no readable image paths ({type(error).__name__}: {error}); "
            "delete it and rebuild the cache"
        ) from None


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
    transform: TaskTransform,
    num_classes: int | None,
    device: torch.device,
    splits: tuple[str, ...] = SPLITS,
    log: Callable[[str], None] = print,
) -> Cache:
    """A task's cache, checked against the settings of the run, on ``device`` if it fits."""
    plan(transform, True)  # refuses what the cache cannot reproduce
    metadata = read_metadata(path)
    if (metadata["style"], metadata["image_size"]) != (transform.style, transform.image_size):
        raise CacheError(
            f"{path} was built for --transform {metadata['style']} --image-size "
            f"{metadata['image_size']}, not {transform.style} {transform.image_size}; "
            "build it for these"
        )
    if _preprocessing(metadata) != transform.preprocessing:
        raise CacheError(
            f"{path} was built for the preprocessing {_preprocessing(metadata)}, not "
            f"{transform.preprocessing}; build it for this arch's (--weights-transforms)"
        )
    found = len(metadata["classes"])
    check_class_count(f"{path}: holds", found, num_classes, "rebuild the cache", CacheError)
    return place(load_cache(path, splits), device, log=log)
