"""Throughput of the training step and of evaluation, per arch and method, on synthetic
batches (so that the model, not the input pipeline, is measured), and what the paper's
table costs at that speed."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch
from torch import nn

from piggyback.backbones import ArchSpec, build_task_model
from piggyback.training import Hyperparameters, SpeedOptions, make_optimizer, prepare_model

# Train / test images of the paper's datasets (docs/datasets.md); wikiart's split is
# the authors' (about 42k / 10.6k).
PAPER_IMAGES = {
    "cubs_cropped": (5994, 5794),
    "stanford_cars_cropped": (8144, 8041),
    "flowers": (2040, 6149),
    "wikiart": (42129, 10628),
    "sketches": (16000, 4000),
}
PAPER_EPOCHS = 30


@dataclass(frozen=True)
class BenchSettings:
    image_size: int
    batch_size: int = 32
    eval_batch_size: int = 64
    steps: int = 10
    warmup: int = 3
    classes: int = 200


def train_images_per_second(
    arch: str, method: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Images per second of full training steps (forward, backward, optimiser)."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    hp = Hyperparameters.for_method(method)
    groups = prepare_model(model, method, hp)
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    forward = torch.compile(model) if speed.compile else model
    optimizer = make_optimizer(groups, hp, fused=speed.fused_optimizer)
    model.train()
    images, labels = _batch(settings.batch_size, settings, device, memory_format)
    criterion = nn.CrossEntropyLoss()

    def step():
        with speed.autocast(device):
            loss = criterion(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _images_per_second(step, settings.batch_size, settings, device)


@torch.no_grad()
def eval_images_per_second(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Evaluation of a packed task: the plain backbone (masks baked in), eval mode."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).eval()
    images, _ = _batch(settings.eval_batch_size, settings, device, memory_format)

    def step():
        with speed.autocast(device):
            model(images)

    return _images_per_second(step, settings.eval_batch_size, settings, device)


def paper_table_gpu_hours(train_img_s: dict[str, float], eval_img_s: dict[str, float]) -> float:
    """Hours for every arch x dataset: 30 epochs, each a pass over train and one over
    test (the per-epoch evaluation), at the measured speeds."""
    seconds = 0.0
    for arch in train_img_s:
        for train_n, test_n in PAPER_IMAGES.values():
            seconds += PAPER_EPOCHS * (train_n / train_img_s[arch] + test_n / eval_img_s[arch])
    return seconds / 3600


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; the process's peak resident set on the CPU
    (which only grows, so later archs report at least the earlier peaks)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def _batch(size, settings, device, memory_format):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, settings.image_size, settings.image_size, generator=generator)
    labels = torch.randint(0, settings.classes, (size,), generator=generator)
    return images.to(device, memory_format=memory_format), labels.to(device)


def _images_per_second(step, batch_size, settings, device) -> float:
    for _ in range(settings.warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(settings.steps):
        step()
    _synchronize(device)
    return settings.steps * batch_size / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
