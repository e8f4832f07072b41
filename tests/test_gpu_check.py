"""The GPU check's CPU mode runs the GPU run's code at toy sizes: a typo found here costs
seconds, not a lent GPU's minutes."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from gpu_check.figures import fitting_batch
from gpu_check.plan import CPU_PLAN, GPU_PLAN, METHOD_ORDER, OverBudget, time_limit
from gpu_check.runner import GpuCheck
from gpu_check.sections import SECTIONS
from gpu_check.summary import PAPER_COMPARISON, paper_comparison

from piggyback.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
# As on the device: PYTHONPATH=src:tools, and neither snakemake nor jsonschema importable.
RUN = (
    "import runpy, sys; "
    "sys.modules.update(dict.fromkeys(('snakemake', 'jsonschema', 'piggyback.interface.config'))); "
    "runpy.run_module('gpu_check', run_name='__main__', alter_sys=True)"
)
TRAIN_FIGURES = {"img_s", "img_s_repeats", "first_step_s", "peak_mem_mb", "settings", "speed"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(
        [sys.executable, "-c", RUN, "--cpu", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tools'}"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), result.stdout, out


def test_every_measurement_of_the_plan_ran(cpu_run):
    report, _, _ = cpu_run
    assert report["mode"] == "cpu"
    assert {"name", "torch", "torchvision", "cpus"} <= report["device"].keys()
    for section in CPU_PLAN.sections:
        assert report[section], f"{section} recorded nothing"
        for record in report[section]:
            allowed = {"ok", "timeout"} if section == "compile" else {"ok"}
            assert record["status"] in allowed, (section, record)
    # the compile step is stopped by the timer: the stop itself is what is tested here
    assert report["compile"][0]["status"] == "timeout"


def test_training_figures_cover_every_method_and_switch_set(cpu_run):
    report, _, _ = cpu_run
    arch = CPU_PLAN.archs[0]
    runs = {(r["method"], r["switches"]): r for r in report["train"]}
    assert runs.keys() == {(m, s) for m in METHODS for s in ("on", "off")}
    for record in runs.values():
        assert TRAIN_FIGURES | {"epoch_eval_img_s", "held_mb"} <= record.keys()
        assert len(record["img_s_repeats"]) == CPU_PLAN.settings.repeats
        assert record["img_s"] > 0 and record["arch"] == arch
        assert record["batch"] == CPU_PLAN.settings.batch_size
    assert runs["piggyback", "on"]["speed"]["amp"] == "bf16"
    assert runs["piggyback", "off"]["speed"] == {
        "amp": "off",
        "channels_last": False,
        "compile": False,
        "fused_optimizer": False,
        "tf32": False,
    }
    largest = {r["method"]: r for r in report["largest_batch"]}
    assert largest.keys() == set(METHODS)
    assert all(r["batch"] == CPU_PLAN.large.batch_size for r in largest.values())
    assert {(r["arch"], r["switches"]) for r in report["eval"]} == {(arch, "on"), (arch, "off")}


def test_a_vision_transformer_is_measured_masked_whole(cpu_run):
    report, _, _ = cpu_run
    (record,) = report["transformer"]
    assert (record["arch"], record["method"], record["switches"]) == (
        CPU_PLAN.transformer,
        "piggyback",
        "on",
    )
    assert record.keys() >= TRAIN_FIGURES and record["img_s"] > 0
    assert GPU_PLAN.transformer == "vit_b_16"


def test_the_mask_cost_is_measured_beside_the_pipelines_step(cpu_run):
    report, _, out = cpu_run
    peer, floor = report["mask_cost"]
    assert (peer["figure"], floor["figure"]) == ("peer", "floor")
    assert peer["arch"] == floor["arch"] == CPU_PLAN.archs[0] and peer["img_s"] > 0
    assert floor.keys() >= {"mask_passes_s", "mask_optimizer_s", "weight_optimizer_s"}
    parts = floor["mask_passes_s"] + floor["mask_optimizer_s"] - floor["weight_optimizer_s"]
    assert floor["added_s"] == pytest.approx(parts, abs=1e-5)
    rendered = (out / "gpu_check.md").read_text()
    for figure in ("over the peer's", "over fine-tuning + floor"):
        (line,) = [line for line in rendered.splitlines() if figure in line]
        assert "| - " not in line, line  # measured, not a blank


def test_fp32_tf32_and_bf16_are_measured_side_by_side(cpu_run):
    report, stdout, _ = cpu_run
    runs = {r["numerics"]: r for r in report["numerics"]}
    assert list(runs) == ["fp32", "tf32", "bf16"]
    assert all(r["status"] == "ok" and r["img_s"] > 0 for r in runs.values())
    speeds = {name: r["speed"] for name, r in runs.items()}
    assert [s["tf32"] for s in speeds.values()] == [False, True, False]
    assert [s["amp"] for s in speeds.values()] == ["off", "off", "bf16"]
    assert all(s["channels_last"] and s["fused_optimizer"] for s in speeds.values())
    assert "against_fp32" not in runs["fp32"]
    # on the CPU TF32 changes nothing, bf16 does
    tf32, bf16 = runs["tf32"]["against_fp32"], runs["bf16"]["against_fp32"]
    assert tf32["loss_rel"] == 0.0 and tf32["grad_rel_l2"] == 0.0
    assert bf16["grad_rel_l2"] > 0
    assert any(line.startswith("| numerics ") for line in stdout.splitlines())
    assert report["device"]["fp32_precision"].keys() == {"cuda.matmul", "cudnn.conv"}


def test_correctness_checks_pass(cpu_run):
    report, _, _ = cpu_run
    checks = {r["name"]: r for r in report["correctness"]}
    assert checks.keys() == {"bf16_agreement", "threshold_in_fp32", "all_ones_mask"}
    assert all(check["passed"] for check in checks.values())
    assert checks["threshold_in_fp32"]["bf16_would_differ"]  # the probe can tell


def test_summary_derives_overhead_projection_and_feed(cpu_run):
    report, _, _ = cpu_run
    summary = {r["name"]: r for r in report["summary"]}
    ratios = {(r["switches"], r["batch"]): r["ratio"] for r in summary["overhead"]["ratios"]}
    batch, large = CPU_PLAN.settings.batch_size, CPU_PLAN.large.batch_size
    assert ratios.keys() == {("on", batch), ("off", batch), ("on", large)}
    train = {(r["method"], r["switches"]): r["img_s"] for r in report["train"]}
    expected = train["finetune", "on"] / train["piggyback", "on"]
    assert ratios["on", batch] == pytest.approx(expected, abs=1e-3)
    projection = summary["projection"]
    assert projection["comparison"]["source"] == "config/config.yaml"
    for switches in ("on", "off"):
        hours = projection["gpu_hours"][switches]
        assert hours["methods"].keys() == PAPER_COMPARISON["methods"].keys()
        assert hours["total"] > hours["methods"]["piggyback"]["total"] > 0
    feed = summary["feed"]["pipelines"]
    assert feed.keys() == {"cached", "dataloader"}
    inputs = {r["name"]: r for r in report["input"]}
    assert inputs["prepare"]["images"] == CPU_PLAN.pipeline_images
    assert inputs["dataloader"]["workers"] == report["device"]["cpus"]


def test_the_goals_table_is_printed_last(cpu_run):
    _, stdout, out = cpu_run
    *_, configurations, goals = [block.splitlines() for block in stdout.strip().split("\n\n")]
    assert [cell.strip() for cell in goals[0].split("|")[1:-1]] == [
        "figure",
        "measured",
        "goal",
        "met",
    ]
    rows = [line.split("|")[1].strip() for line in goals[2:]]
    assert rows[0] == f"{CPU_PLAN.archs[0]} Piggyback training img/s, batch 4, on"
    assert "correctness: bf16_agreement" in rows
    assert all(line.split("|")[4].strip().endswith("cpu mode)") for line in goals[2:])
    assert [line.split("|")[2].strip() for line in configurations[2:]] == list(METHOD_ORDER)
    written = (out / "gpu_check.md").read_text().strip().splitlines()
    assert written[-len(goals) - len(configurations) - 1 :] == [*configurations, "", *goals]


def test_the_gpu_plan_fits_in_eight_minutes():
    assert GPU_PLAN.sections.keys() == CPU_PLAN.sections.keys()
    assert sum(GPU_PLAN.sections.values()) <= 450  # leaves 30 s of the 480 to start Python
    assert GPU_PLAN.archs[0] == "resnet50" and set(GPU_PLAN.archs) == set(PAPER_COMPARISON["archs"])
    scaled = GPU_PLAN.scaled(220)
    assert sum(scaled.sections.values()) == pytest.approx(220)


def test_the_timer_stops_an_overrunning_measurement():
    started = time.monotonic()
    with pytest.raises(OverBudget), time_limit(0.05):
        time.sleep(5)
    assert time.monotonic() - started < 1
    with time_limit(5):  # a measurement within its time is left alone, the timer cleared
        pass
    time.sleep(0.01)


def test_the_largest_batch_is_extrapolated_from_memory():
    # 1,000 MB held, 100 MB per image at batch 32: 4,200 MB; 80% of 80,000 MB fits 512
    assert fitting_batch(4200, 1000, 32, 80_000, 0.8, 256) == 256
    assert fitting_batch(4200, 1000, 32, 20_000, 0.8, 1024) == 128
    assert fitting_batch(4200, 1000, 32, 5_000, 0.8, 256) == 32  # nothing larger fits
    assert fitting_batch(4200, None, 4, None, 0.8, 8) == 8  # the CPU counts no memory


def test_the_comparison_is_read_from_the_config_or_its_copy(tmp_path):
    read = paper_comparison(ROOT / "config" / "config.yaml")
    copy = paper_comparison(tmp_path / "missing.yaml")
    assert copy["source"].startswith("built-in copy")
    for key in ("archs", "methods", "orderings"):
        assert set(map(str, read[key])) == set(map(str, copy[key])), key


def test_a_new_measurement_is_a_section_and_its_time(tmp_path):
    """A section added to the table and given time in the plan runs, is written at once
    and rendered, with the runner unchanged; a planned section the table lacks stops the
    run before it starts."""

    def extra(check):
        figures = {"img_s": 1.0, "earlier": check.report.find("train")}
        check.measure("toy", lambda: figures, arch="toy")

    plan = replace(
        CPU_PLAN,
        sections={**dict.fromkeys(CPU_PLAN.sections, 0), "extra": 5},
        unit_s={**CPU_PLAN.unit_s, "extra": 5},
    )
    config = ROOT / "config" / "config.yaml"
    check = GpuCheck(plan, torch.device("cpu"), tmp_path, config, {**SECTIONS, "extra": extra})
    report = check.run()
    (record,) = report["extra"]
    assert record["status"] == "ok" and record["img_s"] == 1.0 and record["earlier"] is None
    assert all(r["status"] == "skipped" for s in CPU_PLAN.sections for r in report[s])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["extra"] == [record]
    assert (tmp_path / "gpu_check.md").read_text().endswith("(-: cpu mode) |\n")
    with pytest.raises(ValueError, match="'extra'.*sections.py"):
        GpuCheck(plan, torch.device("cpu"), tmp_path, config, SECTIONS)
