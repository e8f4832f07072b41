"""Benchmark: training and evaluation throughput per arch, Piggyback against plain
fine-tuning, against the straightforward port of the mask (the peer) and against
fine-tuning plus the least a mask can add (the floor), and the projected cost of the
paper's table.

Prints one table for the device and writes the same figures to
results/bench/<device>.json. Runs in minutes on a CPU at small image size (default 64
there) and at the paper's 224 on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from tabulate import tabulate

from bench.floor import floor_images_per_second, floor_seconds
from bench.peer import peer_images_per_second
from bench.projection import paper_table_gpu_hours
from bench.throughput import (
    BenchSettings,
    device_name,
    eval_images_per_second,
    peak_memory_mb,
    reset_peak_memory,
    train_images_per_second,
)
from piggyback.files.atomic import atomic_write_json
from piggyback.interface import cli
from piggyback.methods.run import SpeedOptions

# The table's headings for the JSON's keys: a ratio over 1 is the pipeline's step slower.
COLUMNS = {
    "finetune_train_img_s": "fine-tune img/s",
    "peer_train_img_s": "peer img/s",
    "piggyback_train_img_s": "pipeline img/s",
    "overhead_ratio": "pipeline / fine-tune",
    "peer_ratio": "pipeline / peer",
    "floor_ratio": "pipeline / (fine-tune + floor)",
    "floor_added_s": "floor s/step",
}


def measure_arch(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions, rounds: int
) -> dict:
    """The best of ``rounds`` alternating rounds (so that load elsewhere hits every
    column alike) of each figure; the ratios compare step times."""
    piggyback = finetune = peer = evaluation = 0.0
    added = float("inf")
    for _ in range(rounds):
        reset_peak_memory(device)
        piggyback = max(
            piggyback, train_images_per_second(arch, "piggyback", settings, device, speed)
        )
        memory = peak_memory_mb(device)
        finetune = max(finetune, train_images_per_second(arch, "finetune", settings, device, speed))
        peer = max(peer, peer_images_per_second(arch, settings, device, speed))
        evaluation = max(evaluation, eval_images_per_second(arch, settings, device, speed))
        added = min(added, floor_seconds(arch, settings, device, speed)["added_s"])
    floor = floor_images_per_second(finetune, added, settings.batch_size)
    return {
        "finetune_train_img_s": round(finetune, 2),
        "peer_train_img_s": round(peer, 2),
        "piggyback_train_img_s": round(piggyback, 2),
        "overhead_ratio": round(finetune / piggyback, 3),
        "peer_ratio": round(peer / piggyback, 3),
        "floor_ratio": round(floor / piggyback, 3),
        "floor_added_s": round(added, 4),
        "eval_img_s": round(evaluation, 2),
        "peak_mem_mb": round(memory, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet50", "densenet121"])
    parser.add_argument("--image-size", type=int, help="default: 224 on a GPU, 64 on the CPU")
    parser.add_argument("--batch-size", type=int, default=32, help="the paper's 32")
    parser.add_argument("--steps", type=int, help="timed steps (default: 30 GPU, 5 CPU)")
    parser.add_argument("--amp", choices=("off", "bf16"), help="default: bf16 on GPU, off on CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternate the measurements, keep each best"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("results/bench"))
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    device = cli.select_device(args)
    on_gpu = device.type == "cuda"
    settings = BenchSettings(
        image_size=args.image_size or (224 if on_gpu else 64),
        batch_size=args.batch_size,
        steps=args.steps or (30 if on_gpu else 5),
        warmup=10 if on_gpu else 2,
    )
    speed = SpeedOptions(amp=args.amp or ("bf16" if on_gpu else "off"), compile=args.compile)
    speed = speed.resolve(device)
    figures = {}
    for arch in args.archs:
        figures[arch] = measure_arch(arch, settings, device, speed, args.rounds)
        print(f"{arch}: {figures[arch]}", flush=True)
    if on_gpu:
        hours = paper_table_gpu_hours(
            {a: f["piggyback_train_img_s"] for a, f in figures.items()},
            {a: f["eval_img_s"] for a, f in figures.items()},
        )
        for arch_figures in figures.values():
            arch_figures["paper_table_gpu_hours"] = round(hours, 3)
    name = device_name(device)
    report = {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "settings": {**settings.__dict__, **speed.as_dict()},
        "archs": figures,
    }
    atomic_write_json(report, args.out_dir / f"{name}.json")
    rows = [{"arch": arch, **values} for arch, values in figures.items()]
    rows = [{COLUMNS.get(key, key): value for key, value in row.items()} for row in rows]
    print(f"\n{name}, image size {settings.image_size}, batch {settings.batch_size}, {speed}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if on_gpu:
        print(f"projected paper table (3 archs x 5 datasets x 30 epochs): {hours:.2f} GPU-hours")
    print(f"wrote {args.out_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
