"""Batches from the dataset cache on the device: test batches exactly torchvision's (same
bytes cached, same lookup), train batches exactly torchvision's for the same random
draws. The crop parameters are drawn by the DataLoader path's own sampler
(:func:`piggyback.data.transforms.sized_crop_2017`, or ``RandomResizedCrop.get_params``'s
algorithm for the modern one) and the flip as ``RandomHorizontalFlip`` does, in the same
order, from a ``torch.Generator`` seeded per epoch. The draws come from another stream
than a DataLoader worker's, so a run's augmentation equals the DataLoader path's in
distribution, not image for image."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from piggyback.data.cache.format import Cache, CacheError, load_cache, plan
from piggyback.data.cache.resize import resize_and_center_crop, resize_crops
from piggyback.data.transforms import CropSampler, RandomSizedCrop2017, sized_crop_2017

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
        crop: CropSampler = "2017",
    ):
        self.split = cache.splits["train" if train else "test"]
        self.plan = plan(dataclasses.replace(cache.transform, crop=crop), train)
        self.image_size = cache.transform.image_size
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
        crops, padded to one size, resized together. An image whose crop fell back (the
        2017 sampler) is resized whole and centre-cropped on its own."""
        params, flips = [], []
        for item in index:
            params.append(self._crop_params(*self.split.shape(item), generator))
            flips.append(bool(torch.rand(1, generator=generator) < self.plan.flip))
        drawn = [slot for slot, crop in enumerate(params) if crop is not None]
        out = self.image_size
        resized = torch.empty((len(index), 3, out, out), dtype=torch.int32, device=self.device)
        if drawn:
            sizes = torch.tensor([params[slot][2:] for slot in drawn], dtype=torch.int64)
            rows, cols = sizes.max(dim=0).values.tolist()
            crops = torch.zeros(
                (len(drawn), 3, rows, cols),
                dtype=torch.uint8,
                device=self.split.pixels.device,
                pin_memory=self._pinned(),
            )
            for row, slot in enumerate(drawn):
                i, j, h, w = params[slot]
                crops[row, :, :h, :w] = self.split.image(index[slot])[:, i : i + h, j : j + w]
            picked = torch.tensor([flips[slot] for slot in drawn])
            resized[drawn] = resize_crops(self._to_device(crops), sizes, out, picked)
        for slot, crop in enumerate(params):
            if crop is None:
                image = resize_and_center_crop(self.split.image(index[slot]), out)
                resized[slot] = self._to_device(image.flip(-1) if flips[slot] else image)
        return resized

    def _crop_params(
        self, height: int, width: int, generator: torch.Generator
    ) -> tuple[int, int, int, int] | None:
        crop = self.plan.crop
        if isinstance(crop, RandomSizedCrop2017):
            return sized_crop_2017(height, width, generator)
        return crop_params(height, width, generator, tuple(crop.scale), tuple(crop.ratio))

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
    crop: CropSampler = "2017",
) -> CachedBatches:
    """Batches from a cache (or a cache file) on ``device``: see ``CachedBatches``."""
    if not isinstance(cache, Cache):
        cache = load_cache(Path(cache), ("train",) if train else ("test",))
    return CachedBatches(cache, batch_size, train, seed, torch.device(device), prefetch, crop)


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
