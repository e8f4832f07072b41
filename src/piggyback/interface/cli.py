"""Command-line pieces shared by the stage scripts in ``src/``.

A flag that carries a config value (image size, loader workers, batch sizes...) has no
default here: the workflow passes it from the config, whose schema states the default
(workflow/schemas/config.schema.yaml), and a command typed by hand says it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stage scripts that need no torch should not pay for its import
    import torch

    from piggyback.model.backbones import ArchSpec

DEFAULT_GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "piggyback-gpu-locks"


def add_arch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--arch", required=True, help="arch name in the registry, e.g. resnet50")
    group.add_argument(
        "--builder", help="torchvision model builder (default: the arch name), e.g. resnet50"
    )
    group.add_argument(
        "--weights",
        default="IMAGENET1K_V1",
        help="torchvision weights enum name, a .pth/.safetensors file, or 'random' "
        "(default: IMAGENET1K_V1; never DEFAULT, whose meaning changes between releases)",
    )
    group.add_argument(
        "--head", help="dotted name of the classification head (default: last Linear)"
    )
    group.add_argument(
        "--weights-dir", type=Path, help="folder holding downloaded torchvision weight files"
    )


def arch_spec(args: argparse.Namespace) -> ArchSpec:
    from piggyback.model.backbones import ArchSpec

    return ArchSpec(builder=args.builder or args.arch, weights=args.weights, head=args.head)


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", required=required, help="dataset (task) name, e.g. flowers")
    add_image_folder_arguments(group, required)
    group.add_argument(
        "--crop",
        choices=("2017", "modern"),
        required=required,
        help="the 'standard' transform's random training crop (config: datasets.<name>.crop): "
        "'2017', torchvision 0.1.9's RandomSizedCrop that the authors trained with, or "
        "'modern', today's RandomResizedCrop; the 'cropped' transform has none",
    )
    group.add_argument("--classes", type=int, help="expected number of classes (checked)")
    group.add_argument(
        "--workers", type=int, required=required, help="data loader processes (config: workers)"
    )


def add_image_folder_arguments(parser, required: bool = True) -> None:
    """Where a dataset's images are and how they are transformed."""
    parser.add_argument(
        "--data", type=Path, required=required, help="folder with train/<class>/ and test/<class>/"
    )
    parser.add_argument(
        "--transform",
        choices=("cropped", "standard"),
        required=required,
        help="'cropped': resize to a square; 'standard': shorter side, random resized crop",
    )
    parser.add_argument(
        "--image-size", type=int, required=required, help="crop size (config: image_size)"
    )
    parser.add_argument(
        "--prepared",
        type=Path,
        metavar="JSON",
        help="the prepare stage's record of a dataset read where it is (route folder): "
        "--data is checked against its list of files and sizes before it is read",
    )
    add_weights_transforms_argument(parser)


def add_weights_transforms_argument(parser) -> None:
    parser.add_argument(
        "--weights-transforms",
        metavar="BUILDER.ENUM",
        help="resize ratio, interpolation and normalisation of these torchvision weights "
        "(e.g. convnext_tiny.IMAGENET1K_V1) instead of the paper's",
    )


def task_transform(args: argparse.Namespace, crop: str | None = None):
    """The transform the flags give: --transform at --image-size with the preprocessing
    of --weights-transforms, and the train split's ``crop`` (a script that trains
    takes --crop; the others read test splits, or caches, which no crop changes)."""
    from piggyback.data.transforms import TaskTransform

    transform = TaskTransform(
        args.transform, args.image_size, preprocessing(args.weights_transforms)
    )
    return transform if crop is None else dataclasses.replace(transform, crop=crop)


def preprocessing(weights_transforms: str | None):
    """The transforms' preprocessing: that of the torchvision weights named (the value of
    --weights-transforms, or a task's `weights_transforms` in --tasks-json), else the
    paper's."""
    from piggyback.data.transforms import PAPER_PREPROCESSING, weights_preprocessing

    if weights_transforms is None:
        return PAPER_PREPROCESSING
    return weights_preprocessing(weights_transforms)


def add_cache_argument(parser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        help="decoded, pre-resized cache of --data (src/cache.py): batches come from it, "
        "augmented on the device, instead of from DataLoader workers (--workers unused)",
    )


def add_evaluation_arguments(parser) -> None:
    """What an evaluation stage reads its batches with, writes, and computes in."""
    parser.add_argument(
        "--batch-size", type=int, required=True, help="images per batch (config: eval_batch_size)"
    )
    parser.add_argument(
        "--workers", type=int, required=True, help="data loader processes (config: workers)"
    )
    parser.add_argument("--out", type=Path, required=True, help="results (.json)")
    parser.add_argument(
        "--images",
        type=Path,
        help="per-image results (.tsv.gz; default: beside --out, <name>.images.tsv.gz)",
    )
    add_tf32_argument(parser)


def add_tf32_argument(parser) -> None:
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="TF32 for CUDA matmuls and cuDNN convolutions, faster on Ampere and later "
        "GPUs but rounded to a 10-bit mantissa (default: off, true fp32 as the authors "
        "ran; on the CPU it changes nothing)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--device",
        default="auto",
        help="'auto' (lease a free visible GPU, else the CPU), 'cpu', 'cuda:1'...",
    )
    group.add_argument(
        "--gpu-lock-dir",
        type=Path,
        default=DEFAULT_GPU_LOCK_DIR,
        help="where jobs on this machine lease GPUs (default: %(default)s)",
    )
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    add_progress_argument(group)


def add_progress_argument(parser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bars (default: on in a terminal, off in job logs)",
    )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and its `source` entry, for the download and prepare stages."""
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. cubs_cropped")
    parser.add_argument(
        "--source-json",
        metavar="JSON",
        required=True,
        help="the dataset's `source` entry from the config, as a JSON object "
        "(see workflow/schemas/source.schema.yaml)",
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder holding the downloaded files",
    )
    add_progress_argument(parser)


def select_device(args: argparse.Namespace) -> torch.device:
    import torch

    from piggyback.machine import devices
    from piggyback.machine.memory import keep_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.select_device(args.device, args.gpu_lock_dir)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def fail(message: str) -> None:
    """Stop with a one-line error instead of a stack trace."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def add_trained_task_arguments(parser: argparse.ArgumentParser) -> None:
    """A packed file's tasks in use (predict.py, export.py): the pack, the backbone weights
    its tasks were trained on, which tasks, and what a pack may not record."""
    parser.add_argument("pack", type=Path, help="packed file (pack.py's, or imported)")
    parser.add_argument(
        "--weights",
        required=True,
        help="the backbone weights the tasks were trained on (their sha256 is checked): "
        "a .pth/.safetensors file, a torchvision enum name, or 'random'",
    )
    parser.add_argument(
        "--task",
        action="append",
        required=True,
        help="a task of the pack (repeat for several; 'all': every task)",
    )
    group = parser.add_argument_group("backbone (default: the pack's arch, as the builder)")
    group.add_argument("--arch", help="arch name in the registry (checked against the pack)")
    group.add_argument("--builder", help="torchvision model builder (default: the arch name)")
    group.add_argument("--head", help="dotted name of the classification head")
    group.add_argument("--weights-dir", type=Path, help="folder of torchvision weight files")
    group = parser.add_argument_group(
        "what the pack may not record (packs made before it was recorded, imported ones)"
    )
    group.add_argument("--image-size", type=int, help="crop size (config: image_size)")
    group.add_argument(
        "--transform",
        choices=("cropped", "standard"),
        help="the task's transform style (config: datasets.<name>.transform)",
    )
    add_weights_transforms_argument(group)
    group.add_argument(
        "--classes-from",
        type=Path,
        metavar="DIR",
        help="a folder with a subfolder per class (the dataset's test folder): the class "
        "names, in name order, of a task whose pack holds only their count (the authors' "
        "released masks)",
    )


def given_transform(args: argparse.Namespace):
    """The test transform the flags give, or None if they give none."""
    from piggyback.data.transforms import PreprocessingError

    if args.image_size is None and args.transform is None:
        if args.weights_transforms is not None:
            raise PreprocessingError("--weights-transforms needs --image-size and --transform")
        return None
    if args.image_size is None or args.transform is None:
        raise PreprocessingError("give both --image-size and --transform, or neither")
    return task_transform(args)


def folder_class_names(folder: Path | None) -> list[str] | None:
    """The class folders of ``folder`` in name order, as a dataset's labels are."""
    if folder is None:
        return None
    if not folder.is_dir():
        raise FileNotFoundError(f"--classes-from {folder} is not a folder")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
