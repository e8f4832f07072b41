"""`make bench-serving`: many tasks served from one backbone (``piggyback.tasks``), per
arch, on synthetic Piggyback tasks (random masks keeping ``--keep`` of the weights, random
heads): the time to switch tasks against the floor (one plain copy of every masked
weight, timed in the same rounds), batch-1 and batch-32 forward passes, the memory held
for 1, 5 and 20 tasks against 20 fine-tuned networks, and what each added task costs.
Times are the best of their repeats, switches and copies alternated so that load from
elsewhere meets both: on a shared machine the median mostly measures the others.

Both designs of a switch are measured: (a) the library's, which writes the task's masked
weights into the backbone from a kept base, so a forward pass costs the plain network's;
(b) the alternative, which keeps only the pretrained weights and multiplies the active
task's mask in at every forward pass (``torch.nn.utils.parametrize``), so a switch only
points at other planes. Prints two tables and writes results/bench/serving-<device>.json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn
from torch.nn.utils import parametrize

from bench.throughput import device_name, synchronize
from piggyback.files.atomic import atomic_write_json
from piggyback.interface import cli
from piggyback.methods.registry import Hyperparameters
from piggyback.model.backbones import ArchSpec, TaskModel, build_backbone, new_head
from piggyback.model.checkpoints import backbone_sha256
from piggyback.model.masks import masked_parameters
from piggyback.packs.packed_file import PACK_FORMAT, PACK_VERSION, PackedFile, pack_bits
from piggyback.tasks.model import MultiTaskModel
from piggyback.tasks.shared_weights import unpack_planes

MB = 2**20


def synthetic_pack(arch: str, tasks: int, classes: int, keep: float) -> PackedFile:
    """A Piggyback pack in memory over the arch's random weights: per task a random
    binary mask keeping ``keep`` of every masked weight, and a random head."""
    backbone, _ = build_backbone(ArchSpec(arch), "random")
    head_shape = new_head(backbone, classes).weight.shape  # a 1x1 conv's, or a linear's
    layers = {name: list(entry.shape) for name, entry in masked_parameters(backbone).items()}
    generator = torch.Generator().manual_seed(0)
    tensors, entries = {}, {}
    for index in range(tasks):
        task = f"task{index:02d}"
        for name, shape in layers.items():
            kept = torch.rand(shape, generator=generator) < keep
            tensors[f"{task}/mask/{name}"] = pack_bits(kept)
        tensors[f"{task}/head/weight"] = torch.randn(head_shape, generator=generator)
        tensors[f"{task}/head/bias"] = torch.zeros(classes)
        entries[task] = {"storage": "mask", "classes": classes, "layers": layers, "seed": 0}
    manifest = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "arch": arch,
        "method": "piggyback",
        "backbone_sha256": backbone_sha256(backbone),
        "mask": {"kind": "binary", "threshold": Hyperparameters.for_method("piggyback").threshold},
        "ordering": list(entries),
        "tasks": entries,
        "content_sha256": "synthetic",
    }
    return PackedFile(Path(f"synthetic-{arch}"), manifest, tensors)


class PlaneMask(nn.Module):
    """Design (b)'s parametrization: the weight times the active task's mask, expanded
    from its bit plane at every forward pass."""

    def __init__(self, active: dict, name: str, shape: torch.Size):
        super().__init__()
        self.active, self.name, self.shape = active, name, shape
        self.buffer = torch.empty(8 * -(-shape.numel() // 8))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        unpack_planes(self.active["planes"][self.name], self.buffer)
        return weight * self.buffer[: self.shape.numel()].view(self.shape)


class MaskedPerForward:
    """Design (b): the pretrained backbone, the packed planes and the heads; the active
    task's masks are multiplied in at every forward pass."""

    def __init__(self, packed: PackedFile, tasks: list[str], device: torch.device):
        arch = packed.manifest["arch"]
        self.backbone, _ = build_backbone(ArchSpec(arch), "random")
        self.backbone.eval().requires_grad_(False).to(device)
        self.active: dict = {}
        self.planes = {
            task: {
                name: packed.tensors[f"{task}/mask/{name}"].to(device)
                for name in packed.manifest["tasks"][task]["layers"]
            }
            for task in tasks
        }
        self.heads = {}
        for task in tasks:
            head = new_head(self.backbone, packed.manifest["tasks"][task]["classes"])
            head.load_state_dict(packed.head(task))
            self.heads[task] = TaskModel(
                self.backbone, head.to(device), arch, self.backbone.head_name
            )
        for name, entry in masked_parameters(self.backbone).items():
            mask = PlaneMask(self.active, name, entry.shape).to(device)
            parametrize.register_parametrization(entry.module, entry.attribute, mask, unsafe=True)
        self.set_task(tasks[0])

    def set_task(self, task: str) -> None:
        self.active["planes"], self.active["task"] = self.planes[task], task

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.heads[self.active["task"]](images)

    def held_bytes(self) -> dict[str, int]:
        backbone = sum(_nbytes(t) for t in self.backbone.state_dict().values())
        planes = {task: sum(map(_nbytes, p.values())) for task, p in self.planes.items()}
        heads = {t: sum(map(_nbytes, m.head.state_dict().values())) for t, m in self.heads.items()}
        return {"backbone": backbone, "tasks": planes, "heads": heads}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def held_mb(memory: dict) -> float:
    """What a model holds: the backbone, the base (design a), each task and its head."""
    total = memory["backbone"] + memory.get("base", 0)
    total += sum(memory["tasks"].values()) + sum(memory["heads"].values())
    return total / MB


def timed(step, device: torch.device) -> float:
    """Seconds of one call of ``step``, the device synchronised around it."""
    synchronize(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - started


def seconds(step, device: torch.device, repeats: int) -> list[float]:
    """Each of ``repeats`` calls of ``step``, timed alone, after one untimed call."""
    step()
    return [timed(step, device) for _ in range(repeats)]


def measure_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    most = max(args.task_counts)
    packed = synthetic_pack(arch, most, args.classes, args.keep)
    tasks = packed.manifest["ordering"]
    held, held_b = {}, {}
    for count in args.task_counts:
        model = MultiTaskModel.load(packed, "random", tasks=tasks[:count], device=device)
        held[count] = held_mb(model.memory())
        held_b[count] = held_mb(MaskedPerForward(packed, tasks[:count], device).held_bytes())
    memory = model.memory()
    per_forward = MaskedPerForward(packed, tasks, device)
    switches, floors, b_switches = [], [], []
    masked = memory["masked_weights"]
    source, target = torch.randn(masked, device=device), torch.empty(masked, device=device)
    target.copy_(source)  # its pages, touched once
    for round_ in range(1, args.switches + 1):  # alternated, so that load elsewhere hits all
        task = tasks[round_ % len(tasks)]  # never the active one
        switches.append(timed(lambda task=task: model.set_task(task), device))
        floors.append(timed(lambda: target.copy_(source), device))
        b_switches.append(timed(lambda task=task: per_forward.set_task(task), device))
    figures = {}
    for batch, repeats in ((1, args.repeats * 3), (32, args.repeats)):
        images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        with torch.no_grad():
            for name, forward in (("a", model), ("b", per_forward)):
                times = seconds(lambda forward=forward, x=images: forward(x), device, repeats)
                figures[f"{name}_forward_b{batch}_ms"] = 1e3 * min(times)
    pristine = build_backbone(ArchSpec(arch), "random")[0]
    fine_tuned = sum(_nbytes(t) for t in pristine.state_dict().values())
    head = statistics.median(memory["heads"].values())
    switch, floor = min(switches), min(floors)
    return {
        "switch_ms": 1e3 * switch,
        "copy_floor_ms": 1e3 * floor,
        "switch_over_floor": switch / floor,
        "b_switch_ms": 1e3 * min(b_switches),
        **figures,
        **{f"a_held_mb_{count}": mb for count, mb in held.items()},
        **{f"b_held_mb_{count}": mb for count, mb in held_b.items()},
        f"finetuned_mb_{most}": most * (fine_tuned + head) / MB,
        "bits_per_masked_weight_per_task": 8 * max(memory["tasks"].values()) / masked,
        "head_kb": head / 1024,
        "masked_weights": masked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--task-counts", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--classes", type=int, default=200, help="classes per task head")
    parser.add_argument("--keep", type=float, default=0.9, help="share of weights a mask keeps")
    parser.add_argument("--switches", type=int, default=20, help="timed switches (and copies)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batch-32 forward passes")
    parser.add_argument("--out-dir", type=Path, default=Path("results/bench"))
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    device = cli.select_device(args)
    figures = {}
    for arch in args.archs:
        figures[arch] = {k: round(v, 3) for k, v in measure_arch(arch, args, device).items()}
        print(f"{arch}: {figures[arch]}", flush=True)
    name = device_name(device)
    report = {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "gpu_lock_dir")},
        "archs": figures,
    }
    out = args.out_dir / f"serving-{name}.json"
    atomic_write_json(report, out)
    print(f"\n{name}, {args.image_size} px, best times, masks keeping {args.keep:.0%}")
    print(
        tabulate([_time_row(a, f) for a, f in figures.items()], headers="keys", tablefmt="github")
    )
    print()
    rows = [_memory_row(a, f, args.task_counts) for a, f in figures.items()]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"wrote {out}")


def _time_row(arch: str, f: dict) -> dict:
    return {
        "arch": arch,
        "switch ms": f["switch_ms"],
        "copy floor ms": f["copy_floor_ms"],
        "switch / floor": f["switch_over_floor"],
        "forward b1 ms": f["a_forward_b1_ms"],
        "forward b32 ms": f["a_forward_b32_ms"],
        "(b) switch ms": f["b_switch_ms"],
        "(b) forward b1 ms": f["b_forward_b1_ms"],
        "(b) forward b32 ms": f["b_forward_b32_ms"],
    }


def _memory_row(arch: str, f: dict, counts: list[int]) -> dict:
    most = max(counts)
    return {
        "arch": arch,
        **{f"MB, {n} tasks": f[f"a_held_mb_{n}"] for n in counts},
        **{f"(b) MB, {n} tasks": f[f"b_held_mb_{n}"] for n in counts},
        f"MB, {most} fine-tuned": f[f"finetuned_mb_{most}"],
        "bits / masked weight / task": f["bits_per_masked_weight_per_task"],
        "head KB": f["head_kb"],
    }


if __name__ == "__main__":
    main()
