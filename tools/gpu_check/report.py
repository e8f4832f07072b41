"""The GPU check's figures as ``gpu_check.json`` holds them, rewritten after every
measurement: a run stopped at the device's limit still leaves what it measured."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision
from bench.throughput import device_name

from gpu_check.plan import SWITCHES, Plan
from piggyback.files.atomic import atomic_write_json


class Report:
    """The run's device, plan and switch sets, then one list of records per section in
    the plan's order; ``find`` looks up an earlier measurement that succeeded."""

    def __init__(self, plan: Plan, device: torch.device, out: Path):
        self.path = Path(out) / "gpu_check.json"
        self.data: dict[str, Any] = {
            "check": "gpu_check",
            "mode": plan.mode,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device_info(device),
            "plan": dataclasses.asdict(plan),
            "switches": {name: speed.as_dict() for name, speed in SWITCHES.items()},
            **{section: [] for section in plan.sections},
        }

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def add(self, section: str, record: dict) -> None:
        self.data[section].append(record)
        self.save()

    def finish(self, elapsed_s: float) -> None:
        self.data["elapsed_s"] = elapsed_s
        self.save()

    def save(self) -> None:
        atomic_write_json(self.data, self.path)

    def find(self, section: str, **keys) -> dict | None:
        """The first record of ``section`` that succeeded and has every one of ``keys``."""
        for record in self.data[section]:
            if record["status"] == "ok" and all(record.get(k) == v for k, v in keys.items()):
                return record
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    info = {
        "name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        # torch's fp32_precision settings as the check starts (the legacy getters,
        # get_float32_matmul_precision and allow_tf32, refuse once the new ones are set)
        "fp32_precision": {
            "cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
            "cudnn.conv": torch.backends.cudnn.conv.fp32_precision,
        },
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
        )
    return info
