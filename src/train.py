"""Train one task (dataset) with one method and one seed on a backbone.

Writes the best checkpoint by test top-1 (as the original code does) and a metrics
TSV with one row per epoch. Killed and run again with the same arguments, it resumes
after the last written epoch from --state-dir and ends with the same result.

Sequential methods (PackNet) chain their tasks: --start writes the state the first task
starts from (PackNet: the backbone pruned, and retrained on --data if given), and each
task names its predecessor's checkpoint with --previous.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from safetensors import SafetensorError

from piggyback.data.feed import open_task_feed
from piggyback.data.folders import check_folder
from piggyback.data.images import DataError, error_message
from piggyback.files.atomic import atomic_move, atomic_write
from piggyback.interface import cli
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.registry import METHODS, Hyperparameters, MethodError, load_method
from piggyback.methods.run import SpeedOptions, TaskRun, TrainingError, epoch_seed
from piggyback.model.backbones import (
    BackboneError,
    build_source_model,
    build_task_model,
    torchvision_state,
)
from piggyback.model.checkpoints import CheckpointError, atomic_save
from piggyback.training.loop import train_task

# Flags that say where the task's data is and how it is fed: required, but for a start
# that retrains on no source.
DATA_FLAGS = ("dataset", "data", "transform", "image_size", "crop", "workers", "eval_batch_size")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Paper defaults per method (flags above override them):\n"
        + "\n".join(
            f"  {name} ({'sequential' if entry.sequential else 'independent'}): "
            f"{Hyperparameters.for_method(name)}"
            for name, entry in METHODS.items()
        ),
    )
    cli.add_arch_arguments(parser)
    cli.add_data_arguments(parser, required=False)
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        help="images per batch of the test evaluation after each epoch (config: eval_batch_size)",
    )
    cli.add_cache_argument(parser)
    parser.add_argument("--method", choices=list(METHODS), default="piggyback")
    parser.add_argument("--seed", type=int, default=0)
    _add_chain_arguments(parser)
    _add_hyperparameter_arguments(parser)
    _add_speed_arguments(parser)
    _add_output_arguments(parser)
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    missing = [name for name in DATA_FLAGS if getattr(args, name) is None]
    if missing and (args.data is not None or not args.start):
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in missing)
        parser.error(f"{flags} missing: every run but a --start without --data needs them")
    return args


def _add_chain_arguments(parser: argparse.ArgumentParser) -> None:
    chain = parser.add_argument_group("sequential methods (a chain of tasks)")
    chain.add_argument(
        "--start",
        action="store_true",
        help="write the start of a chain instead of a task; --data, if given, is the "
        "source task to retrain on",
    )
    chain.add_argument("--previous", type=Path, help="the previous task's (or the start's) .pt")
    chain.add_argument(
        "--last-in-ordering", action="store_true", help="the ordering's last task (not pruned)"
    )


def _add_hyperparameter_arguments(parser: argparse.ArgumentParser) -> None:
    hyperparameters = parser.add_argument_group("hyperparameters (default: the method's)")
    for name, knob in _all_knobs().items():
        hyperparameters.add_argument(
            f"--{name.replace('_', '-')}",
            type=knob.kind,
            choices=knob.choices,
            default=None,
            metavar=knob.kind.__name__.upper() if knob.choices is None else None,
            help=knob.help,
        )


def _add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("speed (how fast; --amp and --tf32 also change the rounding)")
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
    cli.add_tf32_argument(speed)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
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
        required=True,
        metavar="SECONDS",
        help="write the resume state (and the best checkpoint) after an epoch only when "
        "this long has passed since the last write, and at the end of each phase; 0: "
        "after every epoch (config: compute.resume_every)",
    )


def _all_knobs() -> dict:
    knobs = {}
    for entry in METHODS.values():
        for name, knob in entry.all_knobs().items():
            knobs.setdefault(name, knob)
    return knobs


def main() -> None:
    args = parse_args()
    device = cli.select_device(args)
    state_dir = args.state_dir or args.out.with_name(args.out.name + ".state")
    try:
        overrides = {name: getattr(args, name) for name in _all_knobs()}
        hp = Hyperparameters.for_method(args.method, **overrides)
        classes, train_batches_for, test_batches = task_batches(args, hp.batch_size, device)
        previous = load_task_checkpoint(args.previous) if args.previous else None
        spec = cli.arch_spec(args)
        if args.start and args.data is not None:
            model = build_source_model(spec, args.weights, args.weights_dir, args.arch)
        else:  # a start without source data trains nothing: its head is a placeholder
            model = build_task_model(
                spec, len(classes) or 1, args.weights, args.weights_dir, args.arch
            )
        run = TaskRun(
            args.arch,
            args.method,
            args.dataset if args.data is not None else None,
            classes,
            args.seed,
            hp,
            role="start" if args.start else "task",
            previous=previous,
            last_in_ordering=args.last_in_ordering,
            preprocessing=task_preprocessing(args),
        )
        result = train_task(
            model,
            run,
            train_batches_for,
            test_batches,
            state_dir,
            device,
            progress=args.progress,
            speed=SpeedOptions(
                amp=args.amp,
                channels_last=args.channels_last,
                compile=args.compile,
                fused_optimizer=args.fused_optimizer,
                tf32=args.tf32,
            ),
            resume_every=args.resume_every,
        )
        write_outputs(args, result)
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, CheckpointError, DataError, MethodError, TrainingError) as error:
        cli.fail(error_message(error))
    except (ValueError, OSError) as error:  # e.g. a full disk or a read-only folder
        cli.fail(error_message(error))
    shutil.rmtree(state_dir, ignore_errors=True)
    best = result["best"]
    if best["test_top1_error"] is None:
        print(f"wrote {args.out} (no epoch trained)")
    else:
        print(f"best test top-1 error {best['test_top1_error']:.2f}% at epoch {best['epoch']}")


def task_batches(args: argparse.Namespace, batch_size: int, device):
    """The task's classes, its train batches for an epoch, and its test batches (none for
    a start without source data). An epoch's randomness depends only on (seed, epoch),
    which resuming relies on."""
    if args.data is None:
        return [], None, None
    if args.prepared:
        check_folder(args.data, args.prepared)
    transform = cli.task_transform(args, crop=args.crop)
    feed = open_task_feed(args.data, transform, args.cache, device, args.workers, args.classes)
    return (
        feed.classes,
        lambda epoch: feed.batches("train", batch_size, epoch_seed(args.seed, epoch)),
        feed.batches("test", args.eval_batch_size, 0),
    )


def task_preprocessing(args: argparse.Namespace) -> dict | None:
    """How the task's test images are transformed, for its checkpoint; None without data."""
    if args.data is None:
        return None
    return cli.task_transform(args).as_dict()


def write_outputs(args: argparse.Namespace, result: dict) -> None:
    """Metrics, the exported backbone if asked, and last the checkpoint (moved out of
    the state folder): each written atomically, so a failure leaves the previous one."""
    atomic_write(args.metrics, lambda tmp: write_tsv(result["metrics"], tmp))
    if args.export_backbone:
        best = load_task_checkpoint(result["best_path"])
        backbone = load_method(best.method).trained_backbone(best)
        if backbone is None:
            cli.fail("--export-backbone needs a method that trains the backbone's weights")
        atomic_save(torchvision_state(backbone, best.head, best.head_name), args.export_backbone)
    atomic_move(result["best_path"], args.out)


def write_tsv(rows: list[dict], path: Path) -> None:
    """One row per epoch; columns in order of first appearance (a phase's baseline row
    has no training columns)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
