"""Prepare one dataset as <out>/train/<class>/<image> and <out>/test/<class>/<image>.

Reads the files download.py fetched into --downloads and, by the source route:
  authors   unpacks the authors' archive (train/ and test/ found even one folder down);
  original  unpacks the dataset's own archives and applies the official split, cropping
            CUB and Cars to their boxes (Flowers: train = train + val; Sketch: every
            5th sketch of each class, by number, is a test one);
  digits    writes the scikit-learn digits task;
  fashion_mnist
            writes Fashion-MNIST's images as <class>/<index>.png, a per-class subset
            of each split drawn with a fixed seed (`per_class:`, `seed:`);
  folder    checks a dataset already on disk (`path:`) and records its files and their
            sizes; the folder is neither copied nor written to, and --out holds only
            prepared.json.
The class count is checked against --classes, and every image's header read: an image
Pillow cannot open stops the stage, and one above Pillow's decompression-bomb limit is
named in the log (and decoded whole, here and in training). Everything is written to a
temporary folder beside --out and renamed at the end; <out>/prepared.json (counts per
split) is written last and marks a complete dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback.data.archives import ArchiveError
from piggyback.data.images import DataError
from piggyback.data.prepare import prepare_dataset
from piggyback.data.sources import SourceError, source_from_json
from piggyback.interface import cli


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_source_arguments(parser)
    parser.add_argument(
        "--classes",
        type=int,
        metavar="N",
        help="expected number of classes (the registry's `classes`)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="dataset folder, e.g. data/NAME"
    )
    args = parser.parse_args()
    try:
        source = source_from_json(args.source_json)
        summary = prepare_dataset(
            args.dataset, source, args.downloads, args.out, args.classes, progress=args.progress
        )
    except (SourceError, ArchiveError, DataError) as error:
        cli.fail(str(error))
    images = summary["images"]
    where = summary.get("path", args.out)
    print(
        f"{args.dataset}: {summary['classes']} classes, {images['train']} train and "
        f"{images['test']} test images in {where}"
    )


if __name__ == "__main__":
    main()
