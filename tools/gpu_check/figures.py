"""The figures of one configuration: a training step's speed and memory, a packed task's
evaluation speed, the largest batch that fits, and the input pipelines' test images.
Sections (gpu_check/sections.py) choose the configurations and their order."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from bench.feed import write_jpeg_task
from bench.throughput import (
    BenchSettings,
    allocated_mb,
    epoch_eval_rates,
    eval_images_per_second,
    method_step,
    peak_memory_mb,
    reset_peak_memory,
    synthetic_batch,
    timed_rates,
)

from gpu_check.plan import SWITCHES, Plan
from gpu_check.runner import need, release
from piggyback.data.cache.format import write_cache
from piggyback.data.transforms import TaskTransform


def train_figures(
    device: torch.device, arch: str, method: str, switches: str, settings: BenchSettings
) -> dict:
    """The pipeline's step: its first call timed alone (compilation, cuDNN's choices),
    then the median of the repeats; peak memory from building the step on; then the
    per-epoch evaluation of the same model (not compiled: the loop evaluates the model
    itself)."""
    speed = SWITCHES[switches].resolve(device)
    reset_peak_memory(device)
    try:
        step = method_step(arch, method, settings, device, speed)
        images, labels = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
        first = _seconds(lambda: step(images, labels), device)
        warm = replace(settings, warmup=max(settings.warmup - 1, 0))
        rates = timed_rates(lambda: step(images, labels), settings.batch_size, warm, device)
        figures = {
            **median_rates(rates),
            "first_step_s": round(first, 3),
            "peak_mem_mb": round(peak_memory_mb(device), 1),
            "held_mb": _round(allocated_mb(device)),
            "settings": dataclasses.asdict(settings),
            "speed": speed.as_dict(),
        }
        if not speed.compile:  # a secondary figure: fewer repeats
            brief = replace(settings, warmup=2, steps=max(settings.steps // 2, 1), repeats=3)
            eval_rates = epoch_eval_rates(step, brief, device, speed)
            figures["epoch_eval_img_s"] = round(statistics.median(eval_rates), 1)
        return figures
    finally:
        if speed.compile:
            torch._dynamo.reset()


def eval_figures(device: torch.device, arch: str, switches: str, settings: BenchSettings) -> dict:
    speed = SWITCHES[switches].resolve(device)
    reset_peak_memory(device)
    rate = eval_images_per_second(arch, settings, device, speed)
    return {
        "img_s": round(rate, 1),
        "peak_mem_mb": round(peak_memory_mb(device), 1),
        "settings": dataclasses.asdict(settings),
        "speed": speed.as_dict(),
    }


def largest_figures(
    device: torch.device, plan: Plan, base: dict | None, capacity_mb: float | None
) -> dict:
    """The largest batch predicted to fit, from the memory of ``base`` (the same arch and
    method trained at the paper's batch, switches on); halved on running out of memory."""
    need(base is not None, "no figure at the paper's batch to size it from")
    batch = fitting_batch(
        base["peak_mem_mb"],
        base["held_mb"],
        base["batch"],
        capacity_mb,
        plan.memory_share,
        plan.large.batch_size,
    )
    need(batch > base["batch"], f"no batch above {base['batch']} fits")
    predicted, out_of_memory = batch, []
    while True:
        settings = replace(plan.large, batch_size=batch)
        try:
            figures = train_figures(device, base["arch"], base["method"], "on", settings)
            break
        except torch.cuda.OutOfMemoryError:
            out_of_memory.append(batch)
        release(device)  # here, once the error's frames (holding the step) are gone
        batch //= 2
        need(batch > base["batch"], f"out of memory down to {batch * 2}")
    return {"batch": batch, "predicted": predicted, "out_of_memory": out_of_memory, **figures}


def fitting_batch(
    peak_mb: float,
    held_mb: float | None,
    batch: int,
    capacity_mb: float | None,
    share: float,
    cap: int,
) -> int:
    """The largest ``batch`` times a power of two, up to ``cap``, whose peak memory fits
    in ``share`` of the device's: extrapolated from one measured batch, where what the
    step holds between steps stays and the rest grows with the batch (an overestimate,
    since some of the rest does not). Without memory figures (the CPU), ``cap``."""
    if capacity_mb is None or held_mb is None:
        return cap
    per_image = max(peak_mb - held_mb, 0.0) / batch
    while batch * 2 <= cap and held_mb + per_image * batch * 2 <= share * capacity_mb:
        batch *= 2
    return batch


def prepare_input(plan: Plan, root: Path, cache: Path, workers: int) -> dict:
    """The plan's JPEGs written under ``root`` and their uint8 cache at ``cache``, for
    the two pipelines to read; how long each took and how large they are."""
    started = time.perf_counter()
    write_jpeg_task(root, plan.pipeline_images, 8, plan.source_size, workers)
    written = time.perf_counter()
    write_cache(
        root,
        TaskTransform("standard", plan.settings.image_size),
        cache,
        workers,
        log=lambda _: None,
    )
    return {
        "images": plan.pipeline_images,
        "source_size": list(plan.source_size),
        "jpeg_mb": round(sum(p.stat().st_size for p in root.rglob("*.jpg")) / 2**20, 1),
        "write_jpeg_s": round(written - started, 2),
        "build_cache_s": round(time.perf_counter() - written, 2),
        "cache_mb": round(cache.stat().st_size / 2**20, 1),
    }


def median_rates(rates: list[float]) -> dict:
    return {
        "img_s": round(statistics.median(rates), 1),
        "img_s_repeats": [round(r, 1) for r in rates],
    }


def _seconds(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
