"""How fast the two input pipelines feed training batches: the ``cached`` one (uint8
splits on the device) and the DataLoader path, on JPEGs written for the purpose."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.throughput import synchronize
from piggyback.data.cache.batches import cached_batches
from piggyback.data.cache.format import load_task_cache
from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.transforms import TaskTransform


def write_jpeg_task(
    root: Path, images: int, classes: int, size: tuple[int, int], workers: int = 1
) -> None:
    """``root/{train,test}/<class>/<n>.jpg``: ``images`` training images of ``size``
    (width, height) over ``classes`` classes and one test image per class, smooth
    gradients with noise so that they decode like photographs, not like flat colour."""
    width, height = size
    ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.float32)
    ramp = ramp[..., None] * (200 / ramp.max())
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 8, (4, height, width, 3)).astype(np.float32)  # shared: cheap
    colours = rng.uniform(0.3, 1.0, (images + classes, 3)).astype(np.float32)

    def write(item: tuple[str, int, int]) -> None:
        split, index, label = item
        pixels = np.clip(ramp * colours[index] + noise[index % len(noise)] + 30, 0, 255)
        folder = root / split / f"class_{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        image.save(folder / f"{index:06d}.jpg", quality=90)

    items = [("train", n, n % classes) for n in range(images)]
    items += [("test", images + label, label) for label in range(classes)]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL encodes without the GIL
        list(pool.map(write, items))


def cached_feed_rates(
    cache_path: Path, image_size: int, batch_size: int, device: torch.device, epochs: int
) -> list[float]:
    """Images per second, per epoch, that the ``cached`` pipeline hands to training: the
    train split's uint8 cache placed on ``device`` (if it fits), random crops, flips and
    normalisation there, a background thread preparing batches ahead."""
    cache = load_task_cache(
        cache_path, TaskTransform("standard", image_size), None, device, ("train",)
    )
    return [
        _feed_rate(cached_batches(cache, batch_size, True, epoch, device), device)
        for epoch in range(epochs)
    ]


def loader_feed_rates(
    root: Path, image_size: int, batch_size: int, device: torch.device, workers: int, epochs: int
) -> list[float]:
    """Images per second, per epoch, that the DataLoader path hands to training: JPEG
    decoding and torchvision's transforms in ``workers`` processes, started afresh each
    epoch as the pipeline does, and the copy to ``device``."""
    train, _ = load_task_data(root, TaskTransform("standard", image_size), log=lambda _: None)
    rates = []
    for epoch in range(epochs):
        loader = make_loader(train, batch_size, True, epoch, workers)
        rates.append(_feed_rate(loader, device))
    return rates


def _feed_rate(batches: Iterable, device: torch.device) -> float:
    """Images per second of one pass, from asking for the first batch to holding the
    last one on ``device``."""
    started = time.perf_counter()
    images_seen = 0
    for images, labels in batches:
        images.to(device, non_blocking=True)
        labels.to(device, non_blocking=True)
        images_seen += len(labels)
    synchronize(device)
    return images_seen / (time.perf_counter() - started)
