import json
import subprocess
import sys
from pathlib import Path

from piggyback.benchmark import PAPER_EPOCHS, PAPER_IMAGES, paper_table_gpu_hours

SRC = Path(__file__).resolve().parents[1] / "src"


def test_bench_writes_the_figures_per_arch(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(SRC / "bench.py"),
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
    )
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    figures = report["archs"]["resnet18"]
    assert set(figures) == {
        "piggyback_train_img_s",
        "finetune_train_img_s",
        "overhead_ratio",
        "eval_img_s",
        "peak_mem_mb",
    }
    ratio = figures["finetune_train_img_s"] / figures["piggyback_train_img_s"]
    assert abs(figures["overhead_ratio"] - ratio) < 0.01


def test_paper_table_cost_counts_every_epoch_of_train_and_test():
    images = sum(train + test for train, test in PAPER_IMAGES.values())
    hours = paper_table_gpu_hours({"a": 1000.0}, {"a": 1000.0})
    assert abs(hours - PAPER_EPOCHS * images / 1000 / 3600) < 1e-9
