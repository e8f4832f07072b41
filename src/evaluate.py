"""Evaluate every task of a packed file: build the plain backbone from its weights once,
and for each task apply what the method stored (bake the mask in, PackNet's owners, a
fine-tuned network), attach the task's head, and measure the top-1 and top-5 test error;
all tasks' results go to one JSON file, and every test image's label and top-5 classes,
from the same pass, to a gzipped TSV beside it (docs/statistics.md).

A packed file for another arch, failing its checksums, or whose backbone sha256 differs
from the weights given is refused, as is a data folder whose test classes are not the
task's: each with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import SafetensorError

from piggyback.data.folders import check_folder
from piggyback.data.images import DataError, error_message
from piggyback.data.transforms import (
    PreprocessingError,
    TaskTransform,
)
from piggyback.interface import cli
from piggyback.methods.run import SpeedOptions
from piggyback.model.backbones import BackboneError
from piggyback.packs.packed_file import PackError
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.per_image import per_image_path, write_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pack", type=Path, help="packed file from pack.py")
    cli.add_arch_arguments(parser)
    parser.add_argument(
        "--tasks-json",
        metavar="JSON",
        required=True,
        help='each task\'s test data: {"<task>": {"data": DIR, "transform": "cropped" or '
        '"standard", "cache": FILE or null, "prepared": FILE or null}}, and '
        '"weights_transforms": "<builder>.<ENUM>" where the transforms follow those '
        'torchvision weights; with "prepared" (a dataset read where it is, route folder), '
        "DIR is checked against its record",
    )
    parser.add_argument(
        "--image-size", type=int, required=True, help="crop size (config: image_size)"
    )
    cli.add_evaluation_arguments(parser)
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    tasks = read_tasks(args.tasks_json, args.image_size)
    device = cli.select_device(args)
    speed = SpeedOptions(tf32=args.tf32).resolve(device)
    speed.set_float32_precision()
    try:
        result = evaluate_pack(
            args.pack,
            tasks,
            args.arch,
            cli.arch_spec(args),
            args.batch_size,
            args.weights,
            args.weights_dir,
            device,
            args.workers,
            per_image=True,
        )
        write_evaluation(
            {**result, "speed": speed.as_dict()}, args.out, args.images or per_image_path(args.out)
        )
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, DataError, PackError, OSError) as error:
        cli.fail(error_message(error))
    for task in result["tasks"]:
        print(f"{task['dataset']}: top-1 error {task['top1_error']:.2f}% ({task['images']} images)")


def read_tasks(tasks_json: str, image_size: int) -> dict[str, TaskData]:
    """Each task's test data from --tasks-json; a `folder` dataset's images checked
    against its record first. Bad input ends the run with one line."""
    try:
        entries = json.loads(tasks_json)
        tasks = {
            name: TaskData(
                Path(entry["data"]),
                TaskTransform(
                    entry["transform"],
                    image_size,
                    cli.preprocessing(entry.get("weights_transforms")),
                ),
                _path(entry.get("cache")),
            )
            for name, entry in entries.items()
        }
        records = {name: _path(entry.get("prepared")) for name, entry in entries.items()}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as error:
        cli.fail(f"--tasks-json is not a JSON object of {{task: {{data, transform}}}}: {error}")
    except PreprocessingError as error:
        cli.fail(f"--tasks-json: {error}")
    try:
        for name, record in records.items():
            if record is not None:
                check_folder(tasks[name].data, record)
    except DataError as error:
        cli.fail(str(error))
    return tasks


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


if __name__ == "__main__":
    main()
