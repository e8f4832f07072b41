"""The GPU check's sections, and ``SECTIONS``, the table the runner walks: each section
is a function that asks the runner to ``measure`` its configurations, the most important
first, so that a section cut short by its time has measured those.

A new measurement is a function here and its entry in ``SECTIONS``, with its seconds in
each plan (gpu_check/plan.py). It reads earlier figures with ``check.report.find``; goal
rows or a table of its own go into gpu_check/tables.py's ``GOAL_ROWS`` or ``TABLES``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.feed import cached_feed_rates, loader_feed_rates
from bench.floor import floor_seconds
from bench.peer import peer_images_per_second
from bench.throughput import BenchSettings

from gpu_check import summary
from gpu_check.correctness import CHECKS, deviation, first_step
from gpu_check.figures import (
    eval_figures,
    largest_figures,
    median_rates,
    prepare_input,
    train_figures,
)
from gpu_check.plan import HEADLINE_METHODS, METHOD_ORDER, NUMERICS, SWITCHES
from gpu_check.runner import GpuCheck, need

OTHER_METHODS = METHOD_ORDER[len(HEADLINE_METHODS) :]


def correctness(check: GpuCheck) -> None:
    plan = check.plan
    settings = replace(plan.settings, batch_size=plan.check_batch)
    for name, entry in CHECKS.items():
        check.measure(
            name,
            lambda entry=entry: entry.measure(plan.check_arch, settings, check.device),
            arch=plan.check_arch,
            batch=settings.batch_size,
            image_size=settings.image_size,
        )


def numerics(check: GpuCheck) -> None:
    """fp32, TF32 and bf16 side by side on the headline arch's Piggyback step at the
    paper's batch, the other switches on: training img/s, and how far each one's first
    step (loss, mask gradients) is from fp32's."""
    arch, settings, device = check.plan.archs[0], check.plan.settings, check.device
    steps = {}

    def figures(name: str, switches: str) -> dict:
        steps[name] = first_step(arch, switches, settings, device)
        result = train_figures(device, arch, "piggyback", switches, settings)
        if name != "fp32" and "fp32" in steps:
            result["against_fp32"] = deviation(steps["fp32"], steps[name])
        return result

    for name, switches in NUMERICS.items():
        check.measure(
            f"{arch} piggyback {name} b{settings.batch_size}",
            lambda name=name, switches=switches: figures(name, switches),
            arch=arch,
            method="piggyback",
            numerics=name,
            switches=switches,
            batch=settings.batch_size,
        )


def train(check: GpuCheck) -> None:
    """The paper's batch: switches on before off (the projection needs on), the mask
    overhead's two methods before the rest, the headline arch first."""
    for switches in ("on", "off"):
        for methods in (HEADLINE_METHODS, OTHER_METHODS):
            for arch in check.plan.archs:
                for method in methods:
                    _train_unit(check, arch, method, switches, check.plan.settings)


def mask_cost(check: GpuCheck) -> None:
    """What the mask costs the headline arch's step, switches on, the paper's batch: the
    straightforward port's step (the peer) and the element-wise passes a mask cannot
    avoid (the floor), beside the train section's pipeline and fine-tuning figures."""
    arch, settings = check.plan.archs[0], check.plan.settings
    speed = SWITCHES["on"].resolve(check.device)

    def peer() -> dict:
        return {"img_s": round(peer_images_per_second(arch, settings, check.device, speed), 1)}

    def floor() -> dict:
        parts = floor_seconds(arch, settings, check.device, speed)
        return {name: round(seconds, 6) for name, seconds in parts.items()}

    keys = {"arch": arch, "switches": "on", "batch": settings.batch_size}
    check.measure(f"{arch} peer on b{settings.batch_size}", peer, figure="peer", **keys)
    check.measure(f"{arch} floor on", floor, figure="floor", **keys)


def evaluation(check: GpuCheck) -> None:
    settings = check.plan.settings
    for switches in ("on", "off"):
        for arch in check.plan.archs:
            check.measure(
                f"{arch} {switches} b{settings.eval_batch_size}",
                lambda arch=arch, switches=switches: eval_figures(
                    check.device, arch, switches, settings
                ),
                arch=arch,
                switches=switches,
                batch=settings.eval_batch_size,
            )


def input_pipelines(check: GpuCheck) -> None:
    """JPEGs and their cache written into a temporary folder, then each pipeline's feed
    rate over them."""
    plan, device = check.plan, check.device
    size, batch, epochs = plan.settings.image_size, plan.settings.batch_size, plan.pipeline_epochs
    workers = check.report["device"]["cpus"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        root, cache = Path(folder) / "task", Path(folder) / "task.safetensors"
        prepared = check.measure("prepare", lambda: prepare_input(plan, root, cache, workers))

        def cached():
            need(prepared["status"] == "ok", "the images were not prepared")
            return median_rates(cached_feed_rates(cache, size, batch, device, epochs))

        def loader():
            need(prepared["status"] == "ok", "the images were not prepared")
            rates = loader_feed_rates(root, size, batch, device, workers, epochs)
            return {**median_rates(rates), "workers": workers}

        keys = {"batch": batch, "image_size": size, "epochs": epochs}
        check.measure("cached", cached, pipeline="cached", **keys)
        check.measure("dataloader", loader, pipeline="dataloader", **keys)


def largest_batch(check: GpuCheck) -> None:
    """Per arch and method, sized from its training figures at the paper's batch."""

    def figures(arch: str, method: str) -> dict:
        base = check.report.find("train", arch=arch, method=method, switches="on")
        capacity = check.report["device"].get("memory_mib")
        return largest_figures(check.device, check.plan, base, capacity)

    for methods in (HEADLINE_METHODS, OTHER_METHODS):
        for arch in check.plan.archs:
            for method in methods:
                check.measure(
                    f"{arch} {method} on",
                    lambda arch=arch, method=method: figures(arch, method),
                    arch=arch,
                    method=method,
                    switches="on",
                )


def transformer(check: GpuCheck) -> None:
    """A vision transformer's Piggyback step at the paper's batch, every weight matrix
    masked (the attention blocks' projections too)."""
    _train_unit(check, check.plan.transformer, "piggyback", "on", check.plan.settings)


def compiled(check: GpuCheck) -> None:
    for arch, method in check.plan.compile:
        _train_unit(check, arch, method, "compile", check.plan.settings)


def summary_figures(check: GpuCheck) -> None:
    report = check.report
    check.measure("overhead", lambda: {"ratios": summary.overheads(report)})
    check.measure("projection", lambda: summary.projection(report, check.plan, check.config))
    check.measure("feed", lambda: summary.feed(report))


# Each section of the plans, by the name the plans and the report give it.
SECTIONS: dict[str, Callable[[GpuCheck], None]] = {
    "correctness": correctness,
    "numerics": numerics,
    "train": train,
    "mask_cost": mask_cost,
    "eval": evaluation,
    "input": input_pipelines,
    "largest_batch": largest_batch,
    "transformer": transformer,
    "compile": compiled,
    "summary": summary_figures,
}


def _train_unit(
    check: GpuCheck, arch: str, method: str, switches: str, settings: BenchSettings
) -> dict:
    return check.measure(
        f"{arch} {method} {switches} b{settings.batch_size}",
        lambda: train_figures(check.device, arch, method, switches, settings),
        arch=arch,
        method=method,
        switches=switches,
        batch=settings.batch_size,
    )
