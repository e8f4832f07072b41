import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.projection import (
    PAPER_EPOCHS,
    PAPER_IMAGES,
    gpu_hours,
    paper_table_gpu_hours,
    task_passes,
)

from piggyback.methods.registry import Hyperparameters

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_bench_writes_the_figures_per_arch(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--archs",
            "resnet18",
            "--image-size",
            "32",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=TOOLS,
    )
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    figures = report["archs"]["resnet18"]
    assert set(figures) == {
        "piggyback_train_img_s",
        "finetune_train_img_s",
        "peer_train_img_s",
        "overhead_ratio",
        "peer_ratio",
        "floor_ratio",
        "floor_added_s",
        "eval_img_s",
        "peak_mem_mb",
    }
    piggyback = figures["piggyback_train_img_s"]
    ratio = figures["finetune_train_img_s"] / piggyback
    assert abs(figures["overhead_ratio"] - ratio) < 0.01
    assert abs(figures["peer_ratio"] - figures["peer_train_img_s"] / piggyback) < 0.01
    floor_step_s = 32 / figures["finetune_train_img_s"] + figures["floor_added_s"]
    assert abs(figures["floor_ratio"] - 32 / floor_step_s / piggyback) < 0.01


def test_the_serving_bench_prints_its_rows_and_writes_the_figures(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--archs", "shufflenet_v2_x0_5",
         "--image-size", "32", "--task-counts", "1", "3", "--switches", "2", "--repeats", "1",
         "--threads", "1", "--out-dir", str(tmp_path)],
        check=True, capture_output=True, text=True, cwd=TOOLS,
    )  # fmt: skip
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("serving-*.json")]
    figures = report["archs"]["shufflenet_v2_x0_5"]
    assert figures["switch_over_floor"] == pytest.approx(
        figures["switch_ms"] / figures["copy_floor_ms"],
        rel=0.05,  # both rounded to 1 us
    )
    assert figures["bits_per_masked_weight_per_task"] <= 1.05
    assert figures["a_held_mb_1"] < figures["a_held_mb_3"] < figures["finetuned_mb_3"]
    assert figures["b_held_mb_3"] < figures["a_held_mb_3"]  # (b) keeps no second copy
    rows = [line for line in run.stdout.splitlines() if line.startswith("| shufflenet_v2_x0_5")]
    assert len(rows) == 2  # the times' table and the memory's


def test_paper_table_cost_counts_every_epoch_of_train_and_test():
    images = sum(train + test for train, test in PAPER_IMAGES.values())
    hours = paper_table_gpu_hours({"a": 1000.0}, {"a": 1000.0})
    assert abs(hours - PAPER_EPOCHS * images / 1000 / 3600) < 1e-9


def test_the_comparison_counts_each_methods_passes_over_the_data():
    orderings = [["flowers", "sketches"], ["sketches", "flowers"]]
    piggyback = task_passes("piggyback", Hyperparameters.for_method("piggyback"), orderings)
    assert piggyback == [("flowers", 30, 30), ("sketches", 30, 30)]  # once for both orderings
    packnet = task_passes("packnet", Hyperparameters.for_method("packnet"), orderings)
    # 20 epochs, then (not on the last task) a baseline evaluation and 10 pruned epochs
    assert packnet == [
        ("flowers", 30, 31),
        ("sketches", 20, 20),
        ("sketches", 30, 31),
        ("flowers", 20, 20),
    ]
    hours = gpu_hours([("flowers", 2, 3)], [["flowers"]], 1000.0, 2000.0, 4000.0)
    train, test = PAPER_IMAGES["flowers"]
    assert hours == pytest.approx((2 * train / 1000 + 3 * test / 2000 + test / 4000) / 3600)
