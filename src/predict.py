"""Predict image files with trained tasks: each image's top-5 classes and their
probabilities, for each task named (`--task all`: every task of the pack), the tasks
served from one backbone in memory.

    predict.py PACK --weights W --task T IMAGE_OR_FOLDER... [--out FILE.tsv]

Folders are walked for image files. Images of any mode (greyscale, palette, RGBA, CMYK,
16-bit) are converted to RGB and transformed as the task's test images were. A file that
cannot be read is named and skipped, the others go on, and the exit status is then 1.
Backbone weights other than the tasks', an unknown task or a pack of another arch stop
the run with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors import SafetensorError
from tqdm import tqdm

from piggyback.data.images import DataError, error_message
from piggyback.data.transforms import PreprocessingError
from piggyback.interface import cli
from piggyback.model.backbones import BackboneError
from piggyback.packs.packed_file import PackError, read_manifest
from piggyback.tasks.model import MultiTaskModel
from piggyback.tasks.prediction import (
    Unreadable,
    describe,
    image_files,
    predict_files,
    write_predictions,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_trained_task_arguments(parser)
    parser.add_argument("images", nargs="+", type=Path, help="image files and folders")
    parser.add_argument("--out", type=Path, help="also write the predictions here (.tsv)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    device = cli.select_device(args)
    try:
        model = load_model(args, device)
        tasks = list(model.tasks)
        for info in model.tasks.values():
            info.required_preprocessing()  # known for each task before any image is read
        paths = image_files(args.images)
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, DataError, PackError, PreprocessingError, OSError) as error:
        cli.fail(error_message(error))
    if not paths:
        cli.fail(f"no image files in {', '.join(map(str, args.images))}")
    predictions, unreadable = [], []
    for result in predict_files(model, paths, tasks, args.batch_size, args.progress):
        if isinstance(result, Unreadable):
            unreadable.append(result)
            tqdm.write(f"error: cannot read {result.path} ({result.reason}); skipped", sys.stderr)
        else:
            predictions.append(result)
            tqdm.write(describe(result))
    if args.out is not None:
        try:
            write_predictions(predictions, args.out)
        except OSError as error:
            cli.fail(str(error))
    if unreadable:
        cli.fail(
            f"{len(unreadable)} of {len(paths)} files could not be read as images (named "
            "above); the others were predicted"
        )


def load_model(args: argparse.Namespace, device) -> MultiTaskModel:
    """The pack's named tasks (all for `--task all`) over the backbone weights given."""
    manifest = read_manifest(args.pack)
    tasks = manifest["ordering"] if "all" in args.task else args.task
    names = cli.folder_class_names(args.classes_from)
    return MultiTaskModel.load(
        args.pack,
        args.weights,
        tasks=tasks,
        arch=args.arch,
        builder=args.builder,
        head=args.head,
        weights_dir=args.weights_dir,
        device=device,
        preprocessing=cli.given_transform(args),
        class_names={task: names for task in tasks} if names is not None else None,
    )


if __name__ == "__main__":
    main()
