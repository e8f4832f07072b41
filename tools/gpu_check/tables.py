"""The GPU check's markdown: a heading, then each of ``TABLES`` in order, the goals table
(what was measured against docs/performance.md's goals) last, where a reader looks first."""

from __future__ import annotations

from typing import Any

from bench.floor import floor_images_per_second
from tabulate import tabulate

from gpu_check.correctness import CHECKS
from gpu_check.plan import METHOD_ORDER, Plan
from gpu_check.report import Report

GOALS = {"train_img_s": 2000.0, "overhead": 1.05, "piggyback_hours": 1.5}


def render(report: Report, plan: Plan) -> str:
    info = report["device"]
    heading = (
        f"{info.get('gpu', info['name'])}, torch {info['torch']}, {plan.mode} mode, "
        f"{plan.settings.image_size} px, {report.get('elapsed_s', '?')} s"
    )
    return "\n\n".join((heading, *(table(report, plan) for table in TABLES)))


def configuration_table(report: Report, plan: Plan) -> str:
    """Per arch and method: training img/s with the switches off, on and compiled, the
    peak memory with them on, and the largest batch."""
    rows = []
    for arch in plan.archs:
        for method in METHOD_ORDER:
            row = {"arch": arch, "method": method}
            for section, switches, column in (
                ("train", "off", "off img/s"),
                ("train", "on", "on img/s"),
                ("compile", "compile", "compile img/s"),
            ):
                record = report.find(section, arch=arch, method=method, switches=switches)
                row[column] = _number(record and record["img_s"])
            on = report.find("train", arch=arch, method=method, switches="on")
            row["on peak MB"] = _number(on and on["peak_mem_mb"])
            large = report.find("largest_batch", arch=arch, method=method)
            row["largest batch: img/s"] = (
                f"{large['batch']}: {_number(large['img_s'])}" if large else "-"
            )
            rows.append(row)
    return tabulate(rows, headers="keys", tablefmt="github")


def numerics_table(report: Report, plan: Plan) -> str:
    """fp32, TF32 and bf16 side by side: training img/s and the first step's distance
    from fp32's."""
    rows = []
    for record in report["numerics"]:
        ok = record["status"] == "ok"
        against = record.get("against_fp32", {})
        rows.append(
            {
                "numerics": record["numerics"],
                "arch": record["arch"],
                "batch": record["batch"],
                "Piggyback img/s": _number(record["img_s"]) if ok else record["status"],
                "loss vs fp32 (rel)": _scientific(against.get("loss_rel")),
                "mask grad vs fp32 (rel L2)": _scientific(against.get("grad_rel_l2")),
            }
        )
    return tabulate(rows, headers="keys", tablefmt="github")


def goals_table(report: Report, plan: Plan) -> str:
    """Each of ``GOAL_ROWS``' rows: measured, goal, met (in the CPU mode, toy sizes: no
    verdict on a GPU goal)."""
    rows = [row for rows_of in GOAL_ROWS for row in rows_of(report, plan)]
    if plan.mode != "gpu":
        rows = [{**row, "met": f"({row['met']}: {plan.mode} mode)"} for row in rows]
    return tabulate(rows, headers="keys", tablefmt="github")


def speed_rows(report: Report, plan: Plan) -> list[dict]:
    arch, batch = plan.archs[0], plan.settings.batch_size
    ratios = {
        ratio["switches"]: ratio["ratio"]
        for ratio in _summary_figure(report, "overhead", "ratios") or []
        if ratio["arch"] == arch and ratio["batch"] == batch
    }
    rows = []
    for section, switches in (("train", "on"), ("compile", "compile")):
        record = report.find(section, arch=arch, method="piggyback", switches=switches)
        figure = f"{arch} Piggyback training img/s, batch {batch}, {switches}"
        rows.append(_row(figure, record and record["img_s"], ">=", GOALS["train_img_s"]))
    for switches in ("on", "compile"):
        figure = f"mask overhead, {arch}, batch {batch}, {switches}"
        rows.append(_row(figure, ratios.get(switches), "<=", GOALS["overhead"]))
    hours = _summary_figure(report, "projection", "gpu_hours") or {}
    for switches in ("on", "off"):
        figures = hours.get(switches, {})
        piggyback = figures.get("methods", {}).get("piggyback", {}).get("total")
        figure = f"paper comparison, Piggyback, {switches} (GPU-hours)"
        rows.append(_row(figure, piggyback, "<=", GOALS["piggyback_hours"]))
        figure = f"paper comparison, every method, {switches} (GPU-hours)"
        rows.append(_row(figure, figures.get("total")))
    return rows


def transformer_rows(report: Report, plan: Plan) -> list[dict]:
    record = report.find("transformer", arch=plan.transformer)
    figure = f"{plan.transformer} Piggyback training img/s, batch {plan.settings.batch_size}, on"
    return [_row(figure, record and record["img_s"])]


def mask_cost_rows(report: Report, plan: Plan) -> list[dict]:
    """The pipeline's step against the straightforward port's and against fine-tuning's
    plus the floor (step-time ratios: under 1, the pipeline is faster)."""
    arch, batch = plan.archs[0], plan.settings.batch_size
    keys = {"arch": arch, "switches": "on", "batch": batch}
    pipeline = report.find("train", method="piggyback", **keys)
    finetune = report.find("train", method="finetune", **keys)
    peer = report.find("mask_cost", figure="peer", **keys)
    floor = report.find("mask_cost", figure="floor", **keys)
    peer_ratio = pipeline and peer and peer["img_s"] / pipeline["img_s"]
    floor_ratio = None
    if pipeline and finetune and floor:
        floor_img_s = floor_images_per_second(finetune["img_s"], floor["added_s"], batch)
        floor_ratio = floor_img_s / pipeline["img_s"]
    return [
        _row(
            f"{arch} peer (straightforward mask) training img/s, batch {batch}, on",
            peer and peer["img_s"],
        ),
        _row(f"{arch} Piggyback step over the peer's, on", peer_ratio, "<=", 1.0),
        _row(f"{arch} floor: seconds a mask adds at least, on", floor and floor["added_s"]),
        _row(
            f"{arch} Piggyback step over fine-tuning + floor, on",
            floor_ratio,
            "<=",
            GOALS["overhead"],
        ),
    ]


def feed_rows(report: Report, plan: Plan) -> list[dict]:
    feed = _summary_figure(report, "feed", "pipelines") or {}
    rows = []
    for pipeline in ("cached", "dataloader"):
        figures = feed.get(pipeline)
        ratio = figures and figures["over_consumption"]
        shown = figures and f"{_number(figures['img_s'])} img/s = {ratio}x"
        rows.append(_row(f"{pipeline} input vs fastest training", ratio, ">=", 1.0, shown))
    return rows


def correctness_rows(report: Report, plan: Plan) -> list[dict]:
    rows = []
    for record in report["correctness"]:
        ok = record["status"] == "ok"
        rows.append(
            {
                "figure": f"correctness: {record['name']}",
                "measured": CHECKS[record["name"]].summary(record) if ok else "-",
                "goal": "within tolerance",
                "met": ("yes" if record["passed"] else "no") if ok else "-",
            }
        )
    return rows


# The goals table's rows, in order; a measurement with a goal adds its rows here.
GOAL_ROWS = (speed_rows, mask_cost_rows, transformer_rows, feed_rows, correctness_rows)
# After the heading, in order; the goals table stays last.
TABLES = (numerics_table, configuration_table, goals_table)


def _summary_figure(report: Report, name: str, key: str) -> Any:
    for record in report["summary"]:
        if record["name"] == name and record["status"] == "ok":
            return record[key]
    return None


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


def _scientific(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
