"""Evaluate the backbone's source task (ImageNet, or the demo's pretraining set) with the
head the backbone was trained with: the backbone itself, as the methods that keep it
have it, or with --start a sequential method's start (PackNet: the backbone pruned, and
retrained on the source task if it was). The table's ImageNet row; the result and its
per-image file are written as evaluate.py writes them.

A start made from other backbone weights, or a test folder whose class count is not the
head's, is refused with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import SafetensorError

from piggyback.data.images import DataError, error_message
from piggyback.data.transforms import PreprocessingError
from piggyback.interface import cli
from piggyback.methods.run import SpeedOptions
from piggyback.model.backbones import BackboneError
from piggyback.model.checkpoints import CheckpointError
from piggyback.stages.evaluation import TaskData, evaluate_source
from piggyback.stages.per_image import per_image_path, write_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_arch_arguments(parser)
    group = parser.add_argument_group("the source task")
    group.add_argument("--dataset", required=True, help="its name in the config, e.g. imagenet")
    cli.add_image_folder_arguments(group)
    cli.add_cache_argument(group)
    parser.add_argument("--start", type=Path, help="a sequential method's start (.pt)")
    cli.add_evaluation_arguments(parser)
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    device = cli.select_device(args)
    speed = SpeedOptions(tf32=args.tf32).resolve(device)
    speed.set_float32_precision()
    try:
        result = evaluate_source(
            args.dataset,
            TaskData(args.data, cli.task_transform(args), args.cache),
            args.arch,
            cli.arch_spec(args),
            args.batch_size,
            args.weights,
            args.weights_dir,
            device,
            args.workers,
            args.start,
        )
        write_evaluation(
            {**result, "speed": speed.as_dict()}, args.out, args.images or per_image_path(args.out)
        )
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, CheckpointError, DataError, PreprocessingError, OSError) as error:
        cli.fail(error_message(error))
    (task,) = result["tasks"]
    print(f"{task['dataset']}: top-1 error {task['top1_error']:.2f}% ({task['images']} images)")


if __name__ == "__main__":
    main()
