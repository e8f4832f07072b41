"""Train one task (dataset) with one method and one seed on a backbone.

Writes the best checkpoint by test top-1 (as the original code does) and a metrics
TSV with one row per epoch. Killed and run again with the same arguments, it resumes
after the last finished epoch from --state-dir and ends with the same result.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from safetensors import SafetensorError

from piggyback import cli
from piggyback.atomic import atomic_move, atomic_write
from piggyback.backbones import BackboneError, build_task_model, torchvision_state
from piggyback.checkpoints import CheckpointError, atomic_save, load_checkpoint
from piggyback.data import DataError, error_message, load_task_data, make_loader
from piggyback.fastdata import add_cache_argument, cached_batches, load_task_cache
from piggyback.training import (
    METHODS,
    Hyperparameters,
    SpeedOptions,
    TaskRun,
    TrainingError,
    train_task,
)

HYPERPARAMETER_HELP = {
    "lr": "learning rate of the masks (piggyback) or weights (finetune)",
    "lr_head": "learning rate of the task head",
    "lr_decay_every": "multiply the learning rates by --lr-decay-factor every N epochs",
    "optimizer": "adam or sgd",
    "mask_init": "'1s' (every mask entry = --mask-scale) or 'uniform' in [-scale, scale]",
    "threshold": "mask entries above it keep their weight",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Paper defaults per method (any flag above overrides them):\n"
        + "\n".join(f"  {m}: {Hyperparameters.for_method(m)}" for m in METHODS),
    )
    cli.add_arch_arguments(parser)
    cli.add_data_arguments(parser)
    add_cache_argument(parser)
    parser.add_argument("--method", choices=METHODS, default="piggyback")
    parser.add_argument("--seed", type=int, default=0)
    cli.add_dataclass_arguments(parser, Hyperparameters, "hyperparameters", HYPERPARAMETER_HELP)
    speed = parser.add_argument_group("speed (how fast, not what, is computed)")
    speed.add_argument(
        "--amp", choices=("off", "bf16"), default="off", help="bf16 autocast (default: off)"
    )
    for flag, what in (
        ("channels-last", "channels_last memory format (default: on CUDA)"),
        ("fused-optimizer", "one-kernel optimiser steps (default: on)"),
    ):
        speed.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, help=what)
    speed.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile"
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", type=Path, required=True, help="best checkpoint (.pt)")
    out.add_argument("--metrics", type=Path, required=True, help="per-epoch metrics (.tsv)")
    out.add_argument(
        "--export-backbone",
        type=Path,
        help="also write the best model as a torchvision state dict (.pth), usable as "
        "--weights of later runs: this is how the pretrain stage makes a backbone "
        "(with --method finetune --weights random)",
    )
    out.add_argument(
        "--state-dir",
        type=Path,
        help="resume state, kept apart from the outputs (default: <out>.state/); "
        "removed after success",
    )
    out.add_argument(
        "--resume-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="write the resume state (and the best checkpoint) after an epoch only when "
        "this long has passed since the last write, and after the last epoch "
        "(default 0: after every epoch)",
    )
    cli.add_runtime_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = cli.select_device(args)
    overrides = {f: getattr(args, f) for f in Hyperparameters.__dataclass_fields__}
    hp = Hyperparameters.for_method(args.method, **overrides)
    try:
        classes, train_batches_for, test_batches = task_batches(args, hp, device)
        model = build_task_model(
            cli.arch_spec(args), len(classes), args.weights, args.weights_dir, args.arch
        )
        run = TaskRun(args.arch, args.method, args.dataset, classes, args.seed, hp)
        state_dir = args.state_dir or args.out.with_name(args.out.name + ".state")
        result = train_task(
            model,
            run,
            train_batches_for,
            test_batches,
            state_dir,
            device,
            progress=args.progress,
            speed=SpeedOptions(args.amp, args.channels_last, args.compile, args.fused_optimizer),
            resume_every=args.resume_every,
        )
        write_outputs(args, result)
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, CheckpointError, DataError, TrainingError, ValueError) as error:
        cli.fail(error_message(error))
    except OSError as error:  # a full disk or a read-only folder, while writing
        cli.fail(error_message(error))
    shutil.rmtree(state_dir, ignore_errors=True)
    best = result["best"]
    print(f"best test top-1 error {best['test_top1_error']:.2f}% at epoch {best['epoch']}")


def task_batches(args: argparse.Namespace, hp: Hyperparameters, device):
    """The task's classes, its train batches for an epoch, and its test batches: from
    the data folder through DataLoaders, or with --cache from the decoded cache,
    augmented on the device. Either way an epoch's randomness depends only on
    (seed, epoch), which resuming relies on."""
    if args.cache:
        cache = load_task_cache(args.cache, args.transform, args.image_size, args.classes, device)
        return (
            cache.classes,
            lambda epoch: cached_batches(
                cache, hp.batch_size, True, args.seed * 1_000_003 + epoch, device
            ),
            cached_batches(cache, hp.batch_size, False, 0, device),
        )
    train_data, test_data = load_task_data(args.data, args.transform, args.image_size, args.classes)
    return (
        train_data.classes,
        lambda epoch: make_loader(
            train_data, hp.batch_size, True, args.seed * 1_000_003 + epoch, args.workers
        ),
        make_loader(test_data, hp.batch_size, False, 0, args.workers),
    )


def write_outputs(args: argparse.Namespace, result: dict) -> None:
    """Metrics, the exported backbone if asked, and last the checkpoint (moved out of
    the state folder): each written atomically, so a failure leaves the previous one."""
    atomic_write(args.metrics, lambda tmp: write_tsv(result["metrics"], tmp))
    if args.export_backbone:
        best = load_checkpoint(result["best_path"])
        if "weights" not in best:
            cli.fail(
                "--export-backbone needs --method finetune (the only method that trains weights)"
            )
        atomic_save(
            torchvision_state(best["weights"], best["head"], best["head_name"]),
            args.export_backbone,
        )
    atomic_move(result["best_path"], args.out)


def write_tsv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
