"""The command-line arguments the stage scripts take for the test digits task: a
random-initialised backbone, the task's folder, small images, no loader workers, test
batches of 64, and (training) the resume state written after every epoch."""

from __future__ import annotations

import json
from pathlib import Path


def digits_task_args(data: Path, arch: str = "resnet18") -> list[str]:
    return [
        "--arch",
        arch,
        "--weights",
        "random",
        "--dataset",
        "digits",
        "--data",
        str(data),
        "--transform",
        "cropped",
        "--image-size",
        "32",
        "--crop",
        "2017",
        "--workers",
        "0",
        "--eval-batch-size",
        "64",
        "--resume-every",
        "0",
    ]


def digits_evaluate_args(data: Path, arch: str = "resnet18", task: str = "digits") -> list[str]:
    """evaluate.py's arguments for a packed file holding the digits task as ``task``."""
    tasks = {task: {"data": str(data), "transform": "cropped"}}
    return [
        *("--arch", arch, "--weights", "random", "--tasks-json", json.dumps(tasks)),
        *("--image-size", "32", "--batch-size", "64", "--workers", "0"),
    ]
