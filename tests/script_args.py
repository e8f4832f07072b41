"""The command-line arguments every stage script takes for the test digits task: a
random-initialised backbone, the task's folder, small images, no loader workers."""

from __future__ import annotations

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
        "--workers",
        "0",
    ]
