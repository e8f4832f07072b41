"""Decode a prepared dataset once into a uint8 cache: both splits, after the
deterministic part of their transforms (resize, and for `standard` test images the
centre crop), in one safetensors file that train.py and evaluate.py read with --cache.
Augmentation then runs on the device (docs/data-pipeline.md). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piggyback.data.cache.format import write_cache
from piggyback.data.folders import check_folder
from piggyback.data.images import DataError, error_message
from piggyback.interface import cli


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_image_folder_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="cache file (.safetensors)")
    parser.add_argument(
        "--workers",
        type=int,
        required=True,
        help="decoding threads (config: compute.cache.threads)",
    )
    args = parser.parse_args()
    try:
        if args.prepared:
            check_folder(args.data, args.prepared)
        summary = write_cache(args.data, cli.task_transform(args), args.out, args.workers)
    except (DataError, OSError, ValueError) as error:
        cli.fail(error_message(error))
    print(json.dumps({key: summary[key] for key in ("style", "image_size", "images")}))


if __name__ == "__main__":
    main()
