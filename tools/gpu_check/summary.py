"""Figures derived from the measured ones: the mask overhead, the paper comparison's
GPU-hours at the measured speeds, and the input pipelines against training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.projection import gpu_hours, task_passes

from gpu_check.plan import Plan
from gpu_check.report import Report
from gpu_check.runner import need
from piggyback.methods.registry import START_DATASET, Hyperparameters

# config/config.yaml's comparison, used where PyYAML is missing; the file is the source.
PAPER_COMPARISON = {
    "archs": ["vgg16", "resnet50", "densenet121"],
    "methods": {"classifier_only": {}, "finetune": {}, "packnet": {}, "piggyback": {}},
    "orderings": [
        ["cubs_cropped", "stanford_cars_cropped", "flowers", "wikiart", "sketches"],
        ["sketches", "wikiart", "flowers", "stanford_cars_cropped", "cubs_cropped"],
    ],
}


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


def overheads(report: Report) -> list[dict]:
    """Piggyback's step over fine-tuning's, wherever both ran at one arch, batch and
    switch set."""
    ratios = []
    for section in ("train", "compile", "largest_batch"):
        for piggyback in report[section]:
            if piggyback["status"] != "ok" or piggyback["method"] != "piggyback":
                continue
            keys = {k: piggyback[k] for k in ("arch", "switches", "batch")}
            finetune = report.find(section, method="finetune", **keys)
            if finetune is not None:
                ratio = finetune["img_s"] / piggyback["img_s"]
                ratios.append({**keys, "ratio": round(ratio, 3)})
    return ratios


def projection(report: Report, plan: Plan, config: Path) -> dict:
    """GPU-hours of the paper's comparison at the measured speeds, per switch set."""
    comparison = paper_comparison(config)
    orderings = comparison["orderings"]
    notes = []
    passes = {}
    for method, values in comparison["methods"].items():
        if START_DATASET in values:
            notes.append(f"{method}'s start retrains on {values[START_DATASET]}: not counted")
        knobs = {k: v for k, v in values.items() if k != START_DATASET}
        passes[method] = task_passes(method, Hyperparameters.for_method(method, **knobs), orderings)
    if plan.stand_in:
        notes.append(f"{plan.mode} mode: {plan.stand_in} stands in for every arch")
    hours = {}
    for switches in ("on", "off"):
        per_method = {}
        for method in comparison["methods"]:
            per_arch = {}
            for arch in comparison["archs"]:
                measured = plan.stand_in or arch
                per_arch[arch] = _hours(
                    report, measured, method, switches, passes[method], orderings
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


def _hours(
    report: Report,
    measured: str,
    method: str,
    switches: str,
    passes: list[tuple[str, int, int]],
    orderings: list[list[str]],
) -> float | None:
    """GPU-hours of ``method``'s ``passes`` at the speeds measured on the arch ``measured``;
    None where a figure is missing."""
    train = report.find("train", arch=measured, method=method, switches=switches)
    final = report.find("eval", arch=measured, switches=switches)
    if train is None or final is None:
        return None
    hours = gpu_hours(passes, orderings, train["img_s"], train["epoch_eval_img_s"], final["img_s"])
    return round(hours, 3)


def feed(report: Report) -> dict:
    """What the input pipelines feed against what the fastest training step measured at
    the paper's batch consumes."""
    trained = [r for r in report["train"] if r["status"] == "ok"]
    need(trained, "no training figure to compare with")
    fastest = max(trained, key=lambda r: r["img_s"])
    pipelines = {}
    for pipeline in ("cached", "dataloader"):
        record = report.find("input", pipeline=pipeline)
        if record is not None:
            pipelines[pipeline] = {
                "img_s": record["img_s"],
                "over_consumption": round(record["img_s"] / fastest["img_s"], 2),
            }
    consumer = {k: fastest[k] for k in ("arch", "method", "switches", "batch", "img_s")}
    return {"consumer": consumer, "pipelines": pipelines}


def _total(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else round(sum(values), 3)
