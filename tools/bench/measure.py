"""Throughput of the training step and of evaluation, per arch and method, on synthetic
batches (so that the model, not the input pipeline, is measured); how fast the two input
pipelines feed batches; and what the paper's table costs at the measured speeds."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from piggyback.core.backbones import ArchSpec, build_task_model
from piggyback.core.checkpoints import backbone_sha256
from piggyback.core.evaluation import evaluate
from piggyback.core.masks import bake_masks, maskable_layers, threshold_mask
from piggyback.core.registry import Hyperparameters, load_method, method_entry
from piggyback.core.run import Phase, SpeedOptions, TaskRun
from piggyback.core.training import TrainStep, prepare_training
from piggyback.data.cache.batches import cached_batches
from piggyback.data.cache.format import load_task_cache
from piggyback.data.datasets import load_task_data, make_loader

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
    steps: int = 10  # timed steps per repeat
    warmup: int = 3
    classes: int = 200
    repeats: int = 1  # the figure is the median of the repeats


def train_images_per_second(
    arch: str, method: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Images per second of full training steps (forward, backward, the method's hooks,
    optimiser): the pipeline's own step, with BatchNorm in the mode the method trains in.
    A sequential method is timed on its first task, after the start's pruning."""
    step = method_step(arch, method, settings, device, speed)
    images, labels = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
    rates = timed_rates(lambda: step(images, labels), settings.batch_size, settings, device)
    return statistics.median(rates)


def method_step(
    arch: str, method: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> TrainStep:
    """The training step of ``method``'s first phase on a random-initialised ``arch``."""
    hp = Hyperparameters.for_method(method, batch_size=settings.batch_size)
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    previous = None
    if method_entry(method).sequential:
        previous = _start_state(arch, method, settings.classes, device)
    run = TaskRun(arch, method, "bench", [], 0, hp, previous=previous)
    trained, forward = prepare_training(model, run, device, speed)
    phase = trained.phases(run)[0]
    trained.begin_phase(model, phase)
    step = TrainStep.for_phase(model, forward, trained, phase, hp, speed, device)
    trained.train_mode(model)
    return step


def _start_state(
    arch: str,
    method: str,
    classes: int,
    device: torch.device,
    hp: Hyperparameters | None = None,
) -> dict:
    """A sequential method's start (PackNet: the backbone pruned), as a checkpoint would
    hold it, made in memory; pruned on ``device``, where VGG-16 takes a moment, not
    seconds of the CPU."""
    hp = hp or Hyperparameters.for_method(method)
    model = build_task_model(ArchSpec(arch), classes, weights="random").to(device)
    run = TaskRun(arch, method, None, [], 0, hp, role="start")
    start = load_method(method, hp)
    start.prepare(model, run)
    for phase in start.phases(run):
        start.begin_phase(model, phase)
    return {
        "method": method,
        "dataset": None,
        "backbone_sha256": backbone_sha256(model.backbone),
        **start.checkpoint_meta(),
        **start.trained_state(model),
    }


@torch.no_grad()
def eval_images_per_second(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Evaluation of a packed task: the plain backbone with a mask baked in (about half
    its weights zeroed, as the evaluate stage does), eval mode."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    generator = torch.Generator().manual_seed(0)
    masks = {
        f"{name}.weight": threshold_mask(
            torch.rand(module.weight.shape, generator=generator), "binary", 0.5
        )
        for name, module in maskable_layers(model.backbone)
    }
    bake_masks(model.backbone, masks)
    model.to(device, memory_format=speed.memory_format).eval()
    images, _ = synthetic_batch(settings.eval_batch_size, settings, device, speed.memory_format)

    def step():
        with speed.autocast(device):
            model(images)

    rates = timed_rates(step, settings.eval_batch_size, settings, device)
    return statistics.median(rates)


def epoch_eval_rates(
    step: TrainStep, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> list[float]:
    """Images per second, per repeat, of the per-epoch test evaluation during training:
    the loop's own ``evaluate`` on the model as it trains (masks applied at every forward,
    uncompiled). Leaves the model in eval mode."""
    batch = synthetic_batch(settings.eval_batch_size, settings, device, speed.memory_format)
    return timed_rates(
        lambda: evaluate(step.model, [batch], device, speed),
        settings.eval_batch_size,
        settings,
        device,
    )


def paper_table_gpu_hours(train_img_s: dict[str, float], eval_img_s: dict[str, float]) -> float:
    """Hours for every arch x dataset: 30 epochs, each a pass over train and one over
    test (the per-epoch evaluation), at the measured speeds."""
    seconds = 0.0
    for arch in train_img_s:
        for train_n, test_n in PAPER_IMAGES.values():
            seconds += PAPER_EPOCHS * (train_n / train_img_s[arch] + test_n / eval_img_s[arch])
    return seconds / 3600


def task_phases(method: str, hp: Hyperparameters, last: bool) -> list[Phase]:
    """The phases one task of ``method`` trains in, read off the method itself, prepared
    on a small random model: they depend on the hyperparameters and on whether the task
    is its ordering's last (PackNet prunes all others), not on the arch."""
    arch = "shufflenet_v2_x0_5"  # built and pruned in a tenth of ResNet-18's time
    model = build_task_model(ArchSpec(arch), 2, weights="random")
    previous = None
    if method_entry(method).sequential:
        previous = _start_state(arch, method, 2, torch.device("cpu"), hp)
    run = TaskRun(arch, method, "task", [], 0, hp, previous=previous, last_in_ordering=last)
    implementation = load_method(method, hp)
    implementation.prepare(model, run)
    return implementation.phases(run)


def task_passes(
    method: str, hp: Hyperparameters, orderings: list[list[str]]
) -> list[tuple[str, int, int]]:
    """Per task that the comparison trains with ``method``: its dataset, and its passes
    over the train split and over the test split while training. Each epoch is one of
    each (the per-epoch evaluation); a phase that starts from a baseline evaluates once
    more. An independent method trains each dataset once for all orderings; a sequential
    one trains every ordering's chain, in which the last task is not pruned."""
    if method_entry(method).sequential:
        trained = [
            (dataset, position == len(ordering) - 1)
            for ordering in orderings
            for position, dataset in enumerate(ordering)
        ]
    else:  # (dataset, last in its ordering), which only a sequential method minds
        trained = [(dataset, False) for dataset in dict.fromkeys(sum(orderings, []))]
    phases = {last: task_phases(method, hp, last) for last in {last for _, last in trained}}
    return [
        (
            dataset,
            sum(phase.epochs for phase in phases[last]),
            sum(phase.epochs + phase.baseline for phase in phases[last]),
        )
        for dataset, last in trained
    ]


def gpu_hours(
    passes: list[tuple[str, int, int]],
    orderings: list[list[str]],
    train_img_s: float,
    epoch_eval_img_s: float,
    eval_img_s: float,
) -> float:
    """Hours of ``task_passes`` at the given speeds, then of evaluating each packed task
    once per ordering; image counts from ``PAPER_IMAGES``."""
    seconds = sum(
        train * PAPER_IMAGES[dataset][0] / train_img_s
        + test * PAPER_IMAGES[dataset][1] / epoch_eval_img_s
        for dataset, train, test in passes
    )
    tested = sum(PAPER_IMAGES[dataset][1] for ordering in orderings for dataset in ordering)
    return (seconds + tested / eval_img_s) / 3600


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
    cache = load_task_cache(cache_path, "standard", image_size, None, device, ("train",))
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
    train, _ = load_task_data(root, "standard", image_size, log=lambda _: None)
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
    _synchronize(device)
    return images_seen / (time.perf_counter() - started)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; the process's peak resident set on the CPU
    (which only grows, so later archs report at least the earlier peaks)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocated_mb(device: torch.device) -> float | None:
    """GPU memory held by live tensors now; None on the CPU, which does not count it."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def synthetic_batch(
    size: int, settings: BenchSettings, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, the same every call, already on ``device``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, settings.image_size, settings.image_size, generator=generator)
    labels = torch.randint(0, settings.classes, (size,), generator=generator)
    return images.to(device, memory_format=memory_format), labels.to(device)


def timed_rates(
    step: Callable[[], object], images: int, settings: BenchSettings, device: torch.device
) -> list[float]:
    """Per repeat, ``images`` per call of ``step`` over ``settings.steps`` calls, after
    ``settings.warmup`` untimed ones (compilation, cuDNN's choices, the allocator's
    first blocks); the device is synchronised before each clock reading."""
    for _ in range(settings.warmup):
        step()
    rates = []
    for _ in range(settings.repeats):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(settings.steps):
            step()
        _synchronize(device)
        rates.append(settings.steps * images / (time.perf_counter() - started))
    return rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
