"""The GPU check: every figure the project's GPU goals need, in one prepared run of under
8 minutes, since a GPU is lent rarely, briefly and bare (docs/performance.md, "How to
measure on a GPU").

Sections run in order of importance, each in its share of the time (``Plan``): a section
may use what earlier ones left, never what later ones were given. A measurement that
would not fit in what is left is skipped and says so; one that overruns is stopped by a
timer and recorded as such. Every record goes into the JSON file at once, so a run cut
short still leaves its figures. The CPU mode runs the same code at toy sizes, so that the
test suite catches a broken GPU run before a GPU is lent.

Needs torch, torchvision, numpy, PIL, safetensors, tqdm and tabulate; PyYAML if there (for
the paper config's method list), never snakemake or jsonschema.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gc
import os
import platform
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from bench.feed import cached_feed_rates, loader_feed_rates, write_jpeg_task
from bench.projection import gpu_hours, task_passes
from bench.throughput import (
    BenchSettings,
    allocated_mb,
    device_name,
    epoch_eval_rates,
    eval_images_per_second,
    method_step,
    peak_memory_mb,
    reset_peak_memory,
    synthetic_batch,
    timed_rates,
)
from tabulate import tabulate

from piggyback.atomic import atomic_write_json, atomic_write_text
from piggyback.core.backbones import ArchSpec, build_task_model
from piggyback.core.masks import MaskSpec, add_masks, masked_weights, threshold_mask
from piggyback.core.registry import METHODS, START_DATASET, Hyperparameters
from piggyback.core.run import SpeedOptions
from piggyback.data.cache.format import write_cache

SWITCHES = {
    "off": SpeedOptions(amp="off", channels_last=False, fused_optimizer=False),
    "on": SpeedOptions(amp="bf16", channels_last=True, fused_optimizer=True),
    "compile": SpeedOptions(amp="bf16", channels_last=True, fused_optimizer=True, compile=True),
}
HEADLINE_METHODS = ("piggyback", "finetune")  # the mask overhead is their ratio
METHOD_ORDER = HEADLINE_METHODS + tuple(m for m in METHODS if m not in HEADLINE_METHODS)

# The bf16 path against fp32 on the first step of a random network. bf16 keeps 8
# significant bits; on the CPU the mask gradient's relative L2 error was 0.04 (ResNet-50,
# 224 px) to 0.13 (ResNet-18, 32 px), cosine above 0.99. A broken path (a mask thresholded
# in bf16, a gradient lost) is far outside these bounds.
BF16_TOLERANCE = {"loss_rel": 1e-2, "grad_rel_l2": 0.2, "grad_cosine": 0.98}
# An all-ones mask multiplies every weight by exactly 1; kernels chosen for another memory
# layout may still sum in another order, so relative to the largest output:
ALL_ONES_TOLERANCE = {"off": 1e-5, "on": 1e-2}

GOALS = {"train_img_s": 2000.0, "overhead": 1.05, "piggyback_hours": 1.5}

# config/config.yaml's comparison, used where PyYAML is missing; the file is the source.
PAPER_COMPARISON = {
    "archs": ["vgg16", "resnet50", "densenet121"],
    "methods": {"classifier_only": {}, "finetune": {}, "packnet": {}, "piggyback": {}},
    "orderings": [
        ["cubs_cropped", "stanford_cars_cropped", "flowers", "wikiart", "sketches"],
        ["sketches", "wikiart", "flowers", "stanford_cars_cropped", "cubs_cropped"],
    ],
}


@dataclass(frozen=True)
class Plan:
    """What is measured and in how much time. ``sections`` gives each section's seconds
    in running order; ``unit_s`` the most one measurement of a section may take."""

    mode: str
    archs: tuple[str, ...]  # the headline arch first
    settings: BenchSettings  # the paper's batch
    large: BenchSettings  # batch_size: the largest batch tried
    memory_share: float  # of the GPU's memory a "fitting" batch may need
    check_arch: str
    check_batch: int
    pipeline_images: int
    source_size: tuple[int, int]
    pipeline_epochs: int
    compile: tuple[tuple[str, str], ...]  # (arch, method), in order of importance
    sections: dict[str, float]
    unit_s: dict[str, float]
    stand_in: str | None = None  # measured arch standing in for the paper's (CPU mode)

    def scaled(self, seconds: float) -> Plan:
        factor = seconds / sum(self.sections.values())
        return replace(self, sections={k: v * factor for k, v in self.sections.items()})


GPU_PLAN = Plan(
    mode="gpu",
    archs=("resnet50", "vgg16", "densenet121"),
    settings=BenchSettings(224, batch_size=32, eval_batch_size=64, steps=8, warmup=5, repeats=5),
    large=BenchSettings(224, batch_size=256, eval_batch_size=64, steps=4, warmup=3, repeats=3),
    memory_share=0.8,
    check_arch="resnet50",
    check_batch=8,
    pipeline_images=2048,
    source_size=(500, 375),
    pipeline_epochs=2,
    compile=(("resnet50", "piggyback"), ("resnet50", "finetune")),
    sections={
        "correctness": 25,
        "train": 140,
        "eval": 20,
        "input": 40,
        "largest_batch": 65,
        "compile": 135,
        "summary": 15,
    },
    unit_s={
        "correctness": 20,
        "train": 25,
        "eval": 10,
        "input": 25,
        "largest_batch": 20,
        "compile": 100,
        "summary": 15,
    },
)

CPU_PLAN = Plan(
    mode="cpu",
    archs=("shufflenet_v2_x0_5",),  # built in a tenth of ResNet-18's time
    settings=BenchSettings(32, batch_size=4, eval_batch_size=8, steps=1, warmup=1, repeats=2),
    large=BenchSettings(32, batch_size=8, eval_batch_size=8, steps=1, warmup=1, repeats=1),
    memory_share=0.8,
    check_arch="shufflenet_v2_x0_5",
    check_batch=4,
    pipeline_images=32,
    source_size=(48, 40),
    pipeline_epochs=1,
    compile=(("shufflenet_v2_x0_5", "piggyback"),),
    sections={
        "correctness": 60,
        "train": 120,
        "eval": 30,
        "input": 60,
        "largest_batch": 60,
        "compile": 30,
        "summary": 60,
    },
    # inductor's CPU compile takes far longer than 3 s: the timer's stop is tested
    unit_s={**{section: 30 for section in GPU_PLAN.sections}, "compile": 3},
    stand_in="shufflenet_v2_x0_5",
)


class OverBudget(BaseException):
    """A measurement ran past its time (a BaseException, so that no library's ``except
    Exception`` swallows it)."""


class Skip(Exception):
    """A measurement that cannot be made (what it builds on is missing)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``OverBudget`` in the main thread once ``seconds`` have passed; where the
    platform has no interval timer, the measurement runs to its end."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def release(device: torch.device) -> None:
    """Free what the last measurement left, so that the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _say(line: str) -> None:
    """Progress, flushed at once: a run stopped at its limit keeps what it printed."""
    print(line, flush=True)


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


def paper_comparison(config: Path) -> dict[str, Any]:
    """The archs, methods (with their settings) and orderings of the paper's config, read
    with PyYAML where it is installed, else ``PAPER_COMPARISON``."""
    try:
        import yaml

        loaded = yaml.safe_load(Path(config).read_text())
    except (ImportError, OSError) as error:
        return {**PAPER_COMPARISON, "source": f"built-in copy ({type(error).__name__})"}
    experiment = loaded["experiment"]
    return {
        "archs": list(experiment["archs"]),
        "methods": {m: (loaded.get("methods") or {}).get(m, {}) for m in experiment["methods"]},
        "orderings": [list(loaded["orderings"][name]) for name in experiment["orderings"]],
        "source": str(config),
    }


def device_info(device: torch.device) -> dict[str, Any]:
    info = {
        "name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            memory_mib=round(properties.total_memory / 2**20),
            multiprocessors=properties.multi_processor_count,
            capability=f"{properties.major}.{properties.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
        )
    return info


# -- correctness ------------------------------------------------------------------------


def bf16_agreement(arch: str, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """The pipeline's first Piggyback step with the switches on (bf16 autocast) against
    the same step with them off (fp32): the loss and every mask's gradient."""
    runs = {}
    for switches in ("off", "on"):
        speed = SWITCHES[switches].resolve(device)
        step = method_step(arch, "piggyback", settings, device, speed)
        images, labels = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
        loss, _ = step(images, labels)
        masks = masked_weights(step.model.backbone).values()
        runs[switches] = float(loss), torch.cat([mask.mask_real.grad.flatten() for mask in masks])
        del step
    (fp32_loss, fp32_grad), (bf16_loss, bf16_grad) = runs["off"], runs["on"]
    figures = {
        "loss_fp32": fp32_loss,
        "loss_bf16": bf16_loss,
        "loss_rel": abs(bf16_loss - fp32_loss) / abs(fp32_loss),
        "grad_rel_l2": ((bf16_grad - fp32_grad).norm() / fp32_grad.norm()).item(),
        "grad_cosine": torch.nn.functional.cosine_similarity(bf16_grad, fp32_grad, 0).item(),
        "tolerance": BF16_TOLERANCE,
    }
    figures["passed"] = (
        figures["loss_rel"] <= BF16_TOLERANCE["loss_rel"]
        and figures["grad_rel_l2"] <= BF16_TOLERANCE["grad_rel_l2"]
        and figures["grad_cosine"] >= BF16_TOLERANCE["grad_cosine"]
    )
    return figures


@torch.no_grad()
def threshold_in_fp32(arch: str, settings: BenchSettings, device: torch.device) -> dict:
    """Under bf16 autocast, a mask's entries at the threshold and at the next fp32 value
    above it must give 0 and 1 (in bf16 both round to one value, so would give one)."""
    speed = SWITCHES["on"].resolve(device)
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    name, mask = next(iter(add_masks(model.backbone, MaskSpec()).items()))
    model.to(device, memory_format=speed.memory_format).eval()
    at = torch.tensor(mask.threshold, dtype=torch.float32)
    above = torch.nextafter(at, torch.tensor(1.0))
    alternate = torch.arange(mask.mask_real.numel()).reshape(mask.mask_real.shape) % 2 == 0
    mask.mask_real.copy_(torch.where(alternate, above, at))
    seen = []
    hook = mask.register_forward_hook(lambda module, args, output: seen.append(output))
    images, _ = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
    with speed.autocast(device):
        model(images)
    hook.remove()
    layer = model.backbone.get_submodule(name.removesuffix(".weight"))
    discrete = threshold_mask(mask.mask_real, mask.kind, mask.threshold)
    in_bf16 = threshold_mask(mask.mask_real.bfloat16(), mask.kind, mask.threshold)
    figures = {
        "layer": name,
        "masked_weight_dtype": str(seen[0].dtype),
        "equals_fp32_threshold": torch.equal(
            seen[0], discrete * layer.parametrizations.weight.original
        ),
        "bf16_would_differ": not torch.equal(in_bf16.float(), discrete),
    }
    figures["passed"] = (
        figures["masked_weight_dtype"] == "torch.float32"
        and figures["equals_fp32_threshold"]
        and figures["bf16_would_differ"]
    )
    return figures


@torch.no_grad()
def all_ones_mask_is_plain(arch: str, settings: BenchSettings, device: torch.device) -> dict:
    """A masked model whose masks are all ones against the plain model, per switch set."""
    figures = {}
    for switches, tolerance in ALL_ONES_TOLERANCE.items():
        speed = SWITCHES[switches].resolve(device)
        plain = build_task_model(ArchSpec(arch), settings.classes, weights="random")
        masked = copy.deepcopy(plain)
        add_masks(masked.backbone, MaskSpec())  # every entry 1e-2, above 5e-3: all ones
        images, _ = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
        outputs = []
        for model in (plain, masked):
            model.to(device, memory_format=speed.memory_format).eval()
            with speed.autocast(device):
                outputs.append(model(images).float())
        difference = (outputs[1] - outputs[0]).abs().max().item()
        scale = outputs[0].abs().max().item()
        figures[switches] = {
            "max_abs_diff": difference,
            "output_scale": scale,
            "bit_identical": torch.equal(*outputs),
            "tolerance_rel": tolerance,
        }
    figures["passed"] = all(
        f["max_abs_diff"] <= f["tolerance_rel"] * f["output_scale"] for f in figures.values()
    )
    return figures


# -- the run ------------------------------------------------------------------------------


class GpuCheck:
    """Runs a ``Plan`` on ``device``, writing ``gpu_check.json`` into ``out`` after every
    measurement and ``gpu_check.md`` (the tables) at the end."""

    def __init__(
        self,
        plan: Plan,
        device: torch.device,
        out: Path,
        config: Path,
        log: Callable[[str], None] = _say,
    ):
        self.plan, self.device, self.config, self.log = plan, device, config, log
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.report: dict[str, Any] = {
            "check": "gpu_check",
            "mode": plan.mode,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device_info(device),
            "plan": dataclasses.asdict(plan),
            "switches": {name: speed.as_dict() for name, speed in SWITCHES.items()},
            **{section: [] for section in plan.sections},
        }

    def run(self) -> dict[str, Any]:
        planned_end = self.started
        for section, seconds in self.plan.sections.items():
            planned_end += seconds
            self.section_end = planned_end
            getattr(self, f"_{section}")()
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self._save()
        atomic_write_text(self.tables() + "\n", self.out / "gpu_check.md")
        return self.report

    def _save(self) -> None:
        atomic_write_json(self.report, self.out / "gpu_check.json")

    def _unit(self, section: str, name: str, measure: Callable[[], dict], **keys) -> dict:
        """One measurement in what is left of its section and of its own limit."""
        limit = self.plan.unit_s[section]
        left = min(limit, self.section_end - time.monotonic())
        record: dict[str, Any] = {"name": name, **keys}
        started = time.monotonic()
        if left < limit / 3:
            record.update(status="skipped", reason=f"{max(left, 0):.0f} s of its time left")
        else:
            try:
                with time_limit(left):
                    record.update(measure())
                record["status"] = "ok"
            except OverBudget:
                record.update(status="timeout", reason=f"stopped after {left:.0f} s")
            except Skip as reason:
                record.update(status="skipped", reason=str(reason))
            except Exception as error:  # recorded; the other measurements go on
                traceback.print_exc()
                record.update(status="error", reason=f"{type(error).__name__}: {error}")
            finally:
                release(self.device)
        record["seconds"] = round(time.monotonic() - started, 2)
        self.report[section].append(record)
        self._save()
        elapsed = time.monotonic() - self.started
        self.log(f"[{elapsed:6.1f} s] {section} {name}: {record['status']} {_brief(record)}")
        return record

    def _find(self, section: str, **keys) -> dict | None:
        for record in self.report[section]:
            if record["status"] == "ok" and all(record.get(k) == v for k, v in keys.items()):
                return record
        return None

    # -- sections -------------------------------------------------------------------------

    def _correctness(self) -> None:
        settings = replace(self.plan.settings, batch_size=self.plan.check_batch)
        for name, check in (
            ("bf16_agreement", bf16_agreement),
            ("threshold_in_fp32", threshold_in_fp32),
            ("all_ones_mask", all_ones_mask_is_plain),
        ):
            self._unit(
                "correctness",
                name,
                lambda check=check: check(self.plan.check_arch, settings, self.device),
                arch=self.plan.check_arch,
                batch=settings.batch_size,
                image_size=settings.image_size,
            )

    def _train(self) -> None:
        """The paper's batch: switches on before off (the projection needs on), the
        mask overhead's two methods before the rest, the headline arch first."""
        for switches in ("on", "off"):
            for methods in (HEADLINE_METHODS, METHOD_ORDER[len(HEADLINE_METHODS) :]):
                for arch in self.plan.archs:
                    for method in methods:
                        self._train_unit("train", arch, method, switches, self.plan.settings)

    def _eval(self) -> None:
        settings = self.plan.settings
        for switches in ("on", "off"):
            for arch in self.plan.archs:
                self._unit(
                    "eval",
                    f"{arch} {switches} b{settings.eval_batch_size}",
                    lambda arch=arch, switches=switches: self._eval_figures(arch, switches),
                    arch=arch,
                    switches=switches,
                    batch=settings.eval_batch_size,
                )

    def _input(self) -> None:
        settings, epochs = self.plan.settings, self.plan.pipeline_epochs
        size, batch, workers = (
            settings.image_size,
            settings.batch_size,
            self.report["device"]["cpus"],
        )
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
            root, cache = Path(folder) / "task", Path(folder) / "task.safetensors"
            prepared = self._unit("input", "prepare", lambda: self._prepare_input(root, cache))

            def cached():
                self._need(prepared["status"] == "ok", "the images were not prepared")
                return _rates(cached_feed_rates(cache, size, batch, self.device, epochs))

            def loader():
                self._need(prepared["status"] == "ok", "the images were not prepared")
                rates = loader_feed_rates(root, size, batch, self.device, workers, epochs)
                return {**_rates(rates), "workers": workers}

            keys = {"batch": batch, "image_size": size, "epochs": epochs}
            self._unit("input", "cached", cached, pipeline="cached", **keys)
            self._unit("input", "dataloader", loader, pipeline="dataloader", **keys)

    def _largest_batch(self) -> None:
        for methods in (HEADLINE_METHODS, METHOD_ORDER[len(HEADLINE_METHODS) :]):
            for arch in self.plan.archs:
                for method in methods:
                    self._unit(
                        "largest_batch",
                        f"{arch} {method} on",
                        lambda arch=arch, method=method: self._largest_figures(arch, method),
                        arch=arch,
                        method=method,
                        switches="on",
                    )

    def _compile(self) -> None:
        for arch, method in self.plan.compile:
            self._train_unit("compile", arch, method, "compile", self.plan.settings)

    def _summary(self) -> None:
        self._unit("summary", "overhead", lambda: {"ratios": self._overheads()})
        self._unit("summary", "projection", self._projection)
        self._unit("summary", "feed", self._feed)

    # -- measurements ---------------------------------------------------------------------

    def _train_unit(self, section, arch, method, switches, settings) -> dict:
        return self._unit(
            section,
            f"{arch} {method} {switches} b{settings.batch_size}",
            lambda: self._train_figures(arch, method, switches, settings),
            arch=arch,
            method=method,
            switches=switches,
            batch=settings.batch_size,
        )

    def _train_figures(self, arch, method, switches, settings) -> dict:
        """The pipeline's step: its first call timed alone (compilation, cuDNN's choices),
        then the median of the repeats; peak memory from building the step on; then the
        per-epoch evaluation of the same model (not compiled: the loop evaluates the
        model itself)."""
        device, speed = self.device, SWITCHES[switches].resolve(self.device)
        reset_peak_memory(device)
        try:
            step = method_step(arch, method, settings, device, speed)
            images, labels = synthetic_batch(
                settings.batch_size, settings, device, speed.memory_format
            )
            first = _seconds(lambda: step(images, labels), device)
            warm = replace(settings, warmup=max(settings.warmup - 1, 0))
            rates = timed_rates(lambda: step(images, labels), settings.batch_size, warm, device)
            figures = {
                **_rates(rates),
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

    def _eval_figures(self, arch: str, switches: str) -> dict:
        speed = SWITCHES[switches].resolve(self.device)
        reset_peak_memory(self.device)
        rate = eval_images_per_second(arch, self.plan.settings, self.device, speed)
        return {
            "img_s": round(rate, 1),
            "peak_mem_mb": round(peak_memory_mb(self.device), 1),
            "settings": dataclasses.asdict(self.plan.settings),
            "speed": speed.as_dict(),
        }

    def _largest_figures(self, arch: str, method: str) -> dict:
        """The largest batch predicted to fit, from the paper's batch's memory; halved on
        running out of memory."""
        base = self._find("train", arch=arch, method=method, switches="on")
        self._need(base is not None, "no figure at the paper's batch to size it from")
        info = self.report["device"]
        capacity = info.get("memory_mib")
        cap = self.plan.large.batch_size
        batch = fitting_batch(
            base["peak_mem_mb"],
            base["held_mb"],
            base["batch"],
            capacity,
            self.plan.memory_share,
            cap,
        )
        self._need(batch > base["batch"], f"no batch above {base['batch']} fits")
        predicted, out_of_memory = batch, []
        while True:
            settings = replace(self.plan.large, batch_size=batch)
            try:
                figures = self._train_figures(arch, method, "on", settings)
                break
            except torch.cuda.OutOfMemoryError:
                out_of_memory.append(batch)
            release(self.device)  # here, once the error's frames (holding the step) are gone
            batch //= 2
            self._need(batch > base["batch"], f"out of memory down to {batch * 2}")
        return {"batch": batch, "predicted": predicted, "out_of_memory": out_of_memory, **figures}

    def _prepare_input(self, root: Path, cache: Path) -> dict:
        plan, workers = self.plan, self.report["device"]["cpus"]
        started = time.perf_counter()
        write_jpeg_task(root, plan.pipeline_images, 8, plan.source_size, workers)
        written = time.perf_counter()
        write_cache(root, "standard", plan.settings.image_size, cache, workers, log=lambda _: None)
        return {
            "images": plan.pipeline_images,
            "source_size": list(plan.source_size),
            "jpeg_mb": round(sum(p.stat().st_size for p in root.rglob("*.jpg")) / 2**20, 1),
            "write_jpeg_s": round(written - started, 2),
            "build_cache_s": round(time.perf_counter() - written, 2),
            "cache_mb": round(cache.stat().st_size / 2**20, 1),
        }

    def _overheads(self) -> list[dict]:
        """Piggyback's step over fine-tuning's, wherever both ran at one arch, batch and
        switch set."""
        ratios = []
        for section in ("train", "compile", "largest_batch"):
            for piggyback in self.report[section]:
                if piggyback["status"] != "ok" or piggyback["method"] != "piggyback":
                    continue
                keys = {k: piggyback[k] for k in ("arch", "switches", "batch")}
                finetune = self._find(section, method="finetune", **keys)
                if finetune is not None:
                    ratio = finetune["img_s"] / piggyback["img_s"]
                    ratios.append({**keys, "ratio": round(ratio, 3)})
        return ratios

    def _projection(self) -> dict:
        """GPU-hours of the paper's comparison at the measured speeds, per switch set."""
        comparison = paper_comparison(self.config)
        notes = []
        passes = {}
        for method, values in comparison["methods"].items():
            if START_DATASET in values:
                notes.append(f"{method}'s start retrains on {values[START_DATASET]}: not counted")
            knobs = {k: v for k, v in values.items() if k != START_DATASET}
            passes[method] = task_passes(
                method, Hyperparameters.for_method(method, **knobs), comparison["orderings"]
            )
        if self.plan.stand_in:
            notes.append(f"{self.plan.mode} mode: {self.plan.stand_in} stands in for every arch")
        hours = {}
        for switches in ("on", "off"):
            per_method = {}
            for method in comparison["methods"]:
                per_arch = {}
                for arch in comparison["archs"]:
                    measured = self.plan.stand_in or arch
                    train = self._find("train", arch=measured, method=method, switches=switches)
                    final = self._find("eval", arch=measured, switches=switches)
                    per_arch[arch] = None
                    if train is not None and final is not None:
                        per_arch[arch] = round(
                            gpu_hours(
                                passes[method],
                                comparison["orderings"],
                                train["img_s"],
                                train["epoch_eval_img_s"],
                                final["img_s"],
                            ),
                            3,
                        )
                per_method[method] = {"archs": per_arch, "total": _total(per_arch.values())}
            total = _total(m["total"] for m in per_method.values())
            hours[switches] = {"methods": per_method, "total": total}
        return {
            "comparison": comparison,
            "gpu_hours": hours,
            "notes": notes,
            "assumes": "the input pipeline keeps up (see feed); data loading not counted",
        }

    def _feed(self) -> dict:
        """What the input pipelines feed against what the fastest training step measured
        at the paper's batch consumes."""
        trained = [r for r in self.report["train"] if r["status"] == "ok"]
        self._need(trained, "no training figure to compare with")
        fastest = max(trained, key=lambda r: r["img_s"])
        pipelines = {}
        for pipeline in ("cached", "dataloader"):
            record = self._find("input", pipeline=pipeline)
            if record is not None:
                pipelines[pipeline] = {
                    "img_s": record["img_s"],
                    "over_consumption": round(record["img_s"] / fastest["img_s"], 2),
                }
        consumer = {k: fastest[k] for k in ("arch", "method", "switches", "batch", "img_s")}
        return {"consumer": consumer, "pipelines": pipelines}

    @staticmethod
    def _need(condition: bool, reason: str) -> None:
        if not condition:
            raise Skip(reason)

    # -- tables -----------------------------------------------------------------------------

    def tables(self) -> str:
        """The per-configuration table, then the goals table (printed last)."""
        info = self.report["device"]
        heading = (
            f"{info.get('gpu', info['name'])}, torch {info['torch']}, {self.plan.mode} mode, "
            f"{self.plan.settings.image_size} px, {self.report.get('elapsed_s', '?')} s"
        )
        return "\n\n".join((heading, self._configuration_table(), self._goals_table()))

    def _configuration_table(self) -> str:
        rows = []
        for arch in self.plan.archs:
            for method in METHOD_ORDER:
                row = {"arch": arch, "method": method}
                for section, switches, column in (
                    ("train", "off", "off img/s"),
                    ("train", "on", "on img/s"),
                    ("compile", "compile", "compile img/s"),
                ):
                    record = self._find(section, arch=arch, method=method, switches=switches)
                    row[column] = _number(record and record["img_s"])
                on = self._find("train", arch=arch, method=method, switches="on")
                row["on peak MB"] = _number(on and on["peak_mem_mb"])
                large = self._find("largest_batch", arch=arch, method=method)
                row["largest batch: img/s"] = (
                    f"{large['batch']}: {_number(large['img_s'])}" if large else "-"
                )
                rows.append(row)
        return tabulate(rows, headers="keys", tablefmt="github")

    def _goals_table(self) -> str:
        """The goals of docs/performance.md and the correctness checks: measured, goal, met
        (in the CPU mode, toy sizes: no verdict on a GPU goal)."""
        rows = [*self._speed_rows(), *self._feed_rows(), *self._correctness_rows()]
        if self.plan.mode != "gpu":
            rows = [{**row, "met": f"({row['met']}: {self.plan.mode} mode)"} for row in rows]
        return tabulate(rows, headers="keys", tablefmt="github")

    def _summary_figure(self, name: str, key: str) -> Any:
        for record in self.report["summary"]:
            if record["name"] == name and record["status"] == "ok":
                return record[key]
        return None

    def _speed_rows(self) -> list[dict]:
        arch, batch = self.plan.archs[0], self.plan.settings.batch_size
        ratios = {
            ratio["switches"]: ratio["ratio"]
            for ratio in self._summary_figure("overhead", "ratios") or []
            if ratio["arch"] == arch and ratio["batch"] == batch
        }
        rows = []
        for section, switches in (("train", "on"), ("compile", "compile")):
            record = self._find(section, arch=arch, method="piggyback", switches=switches)
            figure = f"{arch} Piggyback training img/s, batch {batch}, {switches}"
            rows.append(_row(figure, record and record["img_s"], ">=", GOALS["train_img_s"]))
        for switches in ("on", "compile"):
            figure = f"mask overhead, {arch}, batch {batch}, {switches}"
            rows.append(_row(figure, ratios.get(switches), "<=", GOALS["overhead"]))
        hours = self._summary_figure("projection", "gpu_hours") or {}
        for switches in ("on", "off"):
            figures = hours.get(switches, {})
            piggyback = figures.get("methods", {}).get("piggyback", {}).get("total")
            figure = f"paper comparison, Piggyback, {switches} (GPU-hours)"
            rows.append(_row(figure, piggyback, "<=", GOALS["piggyback_hours"]))
            figure = f"paper comparison, every method, {switches} (GPU-hours)"
            rows.append(_row(figure, figures.get("total")))
        return rows

    def _feed_rows(self) -> list[dict]:
        feed = self._summary_figure("feed", "pipelines") or {}
        rows = []
        for pipeline in ("cached", "dataloader"):
            figures = feed.get(pipeline)
            ratio = figures and figures["over_consumption"]
            shown = figures and f"{_number(figures['img_s'])} img/s = {ratio}x"
            rows.append(_row(f"{pipeline} input vs fastest training", ratio, ">=", 1.0, shown))
        return rows

    def _correctness_rows(self) -> list[dict]:
        rows = []
        for record in self.report["correctness"]:
            met = "-" if record["status"] != "ok" else ("yes" if record["passed"] else "no")
            rows.append(
                {
                    "figure": f"correctness: {record['name']}",
                    "measured": _check_brief(record),
                    "goal": "within tolerance",
                    "met": met,
                }
            )
        return rows


def _row(
    figure: str,
    value: float | None,
    relation: str | None = None,
    target: float | None = None,
    shown: str | None = None,
) -> dict:
    """A goals-table row; ``met`` only where there is a value and a goal."""
    met = "-"
    if value is not None and relation is not None:
        met = "yes" if (value >= target if relation == ">=" else value <= target) else "no"
    return {
        "figure": figure,
        "measured": shown or _number(value),
        "goal": "-" if relation is None else f"{relation} {target:g}",
        "met": met,
    }


def _seconds(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _rates(rates: list[float]) -> dict:
    return {
        "img_s": round(statistics.median(rates), 1),
        "img_s_repeats": [round(r, 1) for r in rates],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _total(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else round(sum(values), 3)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _brief(record: dict) -> str:
    if record["status"] != "ok":
        return record.get("reason", "")
    if "img_s" in record:
        peak = f", peak {record['peak_mem_mb']:,.0f} MB" if "peak_mem_mb" in record else ""
        return f"{record['img_s']:,.1f} img/s{peak}"
    if "passed" in record:
        return "passed" if record["passed"] else "FAILED"
    return ""


def _check_brief(record: dict) -> str:
    if record["status"] != "ok":
        return "-"
    if "grad_rel_l2" in record:
        return (
            f"loss {record['loss_rel']:.1e}, mask grad L2 {record['grad_rel_l2']:.3f}, "
            f"cosine {record['grad_cosine']:.4f}"
        )
    if "masked_weight_dtype" in record:
        return f"{record['masked_weight_dtype']}, equal: {record['equals_fp32_threshold']}"
    return ", ".join(f"{s} diff {record[s]['max_abs_diff']:.1e}" for s in ALL_ONES_TOLERANCE)
