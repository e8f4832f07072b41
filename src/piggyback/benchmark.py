"""Throughput of the training step and of evaluation, per arch and method, on synthetic
batches (so that the model, not the input pipeline, is measured), and what the paper's
table costs at that speed."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from piggyback.backbones import ArchSpec, backbone_sha256, build_task_model
from piggyback.methods import Hyperparameters, load_method, method_entry
from piggyback.training import SpeedOptions, TaskRun, TrainStep, prepare_training

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
    """Images per second of full training steps (forward, backward, the method's hooks,
    optimiser): the pipeline's own step, with BatchNorm in the mode the method trains in.
    A sequential method is timed on its first task, after the start's pruning."""
    step = method_step(arch, method, settings, device, speed)
    images, labels = _batch(settings.batch_size, settings, device, speed.memory_format)
    return _images_per_second(lambda: step(images, labels), settings.batch_size, settings, device)


def method_step(
    arch: str, method: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> TrainStep:
    """The training step of ``method``'s first phase on a random-initialised ``arch``."""
    hp = Hyperparameters.for_method(method, batch_size=settings.batch_size)
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    previous = _start_state(arch, method, settings) if method_entry(method).sequential else None
    run = TaskRun(arch, method, "bench", [], 0, hp, previous=previous)
    trained, forward = prepare_training(model, run, device, speed)
    phase = trained.phases(run)[0]
    trained.begin_phase(model, phase)
    step = TrainStep.for_phase(model, forward, trained, phase, hp, speed, device)
    trained.train_mode(model)
    return step


def _start_state(arch: str, method: str, settings: BenchSettings) -> dict:
    """A sequential method's start (PackNet: the backbone pruned), as a checkpoint would
    hold it, made in memory on the CPU."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    run = TaskRun(arch, method, None, [], 0, Hyperparameters.for_method(method), role="start")
    start = load_method(method)
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
    """Evaluation of a packed task: the plain backbone (masks baked in), eval mode."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    model.to(device, memory_format=speed.memory_format).eval()
    images, _ = _batch(settings.eval_batch_size, settings, device, speed.memory_format)

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
