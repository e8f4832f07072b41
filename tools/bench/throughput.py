"""Throughput of the training step and of evaluation, per arch and method, on synthetic
batches (so that the model, not the input pipeline, is measured), and the device's memory
figures measured alongside."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from piggyback.methods.checkpoints import task_checkpoint
from piggyback.methods.registry import Hyperparameters, load_method, method_entry
from piggyback.methods.run import SpeedOptions, TaskRun
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.checkpoints import TaskCheckpoint, backbone_sha256
from piggyback.model.masks import MaskRule, bake_masks, masked_parameters, threshold_mask
from piggyback.stages.evaluation import evaluate
from piggyback.training.loop import TrainStep, prepare_training


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
        previous = start_state(arch, method, settings.classes, device)
    run = TaskRun(arch, method, "bench", [], 0, hp, previous=previous)
    trained, forward = prepare_training(model, run, device, speed)
    phase = trained.phases(run)[0]
    trained.begin_phase(model, phase)
    step = TrainStep.for_phase(model, forward, trained, phase, hp, speed, device)
    trained.train_mode(model)
    return step


def start_state(
    arch: str,
    method: str,
    classes: int,
    device: torch.device,
    hp: Hyperparameters | None = None,
) -> TaskCheckpoint:
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
    return task_checkpoint(
        {
            "arch": arch,
            "method": method,
            "role": "start",
            "dataset": None,
            "classes": classes,
            "backbone_sha256": backbone_sha256(model.backbone),
            **start.checkpoint_meta(),
            **start.trained_state(model),
        }
    )


@torch.no_grad()
def eval_images_per_second(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Evaluation of a packed task: the plain backbone with a mask baked in (about half
    its weights zeroed, as the evaluate stage does), eval mode."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    generator = torch.Generator().manual_seed(0)
    masks = {
        name: threshold_mask(torch.rand(layer.shape, generator=generator), MaskRule("binary", 0.5))
        for name, layer in masked_parameters(model.backbone).items()
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
        synchronize(device)
        started = time.perf_counter()
        for _ in range(settings.steps):
            step()
        synchronize(device)
        rates.append(settings.steps * images / (time.perf_counter() - started))
    return rates


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
