"""Evaluate one task of a packed file: build the plain backbone from its weights,
bake the task's mask into them once, attach the task's head, and write the top-1 and
top-5 test error with the image count as JSON.

A packed file for another arch, without this task, failing its content checksum, or
whose backbone sha256 differs from the weights given is refused, as is a data folder
whose test classes are not the task's: each with a one-line `error: ...`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import SafetensorError

from piggyback import cli
from piggyback.atomic import atomic_write_json
from piggyback.backbones import BackboneError
from piggyback.data import DataError, error_message
from piggyback.evaluation import evaluate_packed
from piggyback.fastdata import add_cache_argument
from piggyback.packing import PackError


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pack", type=Path, help="packed file from pack.py")
    cli.add_arch_arguments(parser)
    cli.add_data_arguments(parser, classes=False)
    add_cache_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True, help="result (.json)")
    cli.add_runtime_arguments(parser)
    args = parser.parse_args()
    device = cli.select_device(args)
    try:
        result = evaluate_packed(
            args.pack,
            args.dataset,
            args.arch,
            cli.arch_spec(args),
            args.data,
            args.transform,
            args.image_size,
            args.batch_size,
            args.weights,
            args.weights_dir,
            device,
            args.workers,
            args.cache,
        )
        atomic_write_json(result, args.out)
    except SafetensorError as error:
        cli.fail(f"weights file {args.weights} is not a readable safetensors file: {error}")
    except (BackboneError, DataError, PackError, OSError) as error:
        cli.fail(error_message(error))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
