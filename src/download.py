"""Fetch and verify every file one dataset's source route needs, then write a marker.

Routes (the `source` entry of the dataset in the config, passed as JSON):
  authors   the authors' prepared archive (default <dataset>.zip). Box links are not
            plain file URLs: download it in a browser into --downloads, or give `url:`
            of your own mirror. Without a url this only checks the file is there.
  original  the dataset's own archives, each from `files.<name>.url`, checked by md5.
  digits    nothing to fetch (scikit-learn ships the images).
  folder    nothing to fetch (the dataset is already on disk).
  fashion_mnist
            Fashion-MNIST's four files: Debian's installed package where it is, else
            `apt-get download dataset-fashion-mnist` into --downloads/fashion-mnist/
            (the .deb kept), else the original release over HTTP (`url:`); each checked
            by the sha256 of its decompressed bytes.

A file already present that verifies is not downloaded again; an interrupted download
resumes. The --done marker (JSON: each file's size, md5 and sha256) is written last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback.data.download import DownloadError
from piggyback.data.sources import SourceError, fetch_source, source_from_json
from piggyback.files.atomic import atomic_write_json
from piggyback.interface import cli

EXAMPLE = """example:
  python src/download.py --dataset cubs_cropped --downloads downloads \\
    --source-json '{"route": "original", "kind": "cub200", "files": {"CUB_200_2011.tgz":
      {"url": "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
       "md5": "97eceeb196236b17998738112f37df78"}}}' \\
    --done downloads/cubs_cropped.downloaded
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
    )
    cli.add_source_arguments(parser)
    parser.add_argument(
        "--done",
        type=Path,
        required=True,
        metavar="FILE",
        help="marker written when all files verify (.json)",
    )
    args = parser.parse_args()
    try:
        source = source_from_json(args.source_json)
        fetched = fetch_source(args.dataset, source, args.downloads, progress=args.progress)
    except (SourceError, DownloadError) as error:
        cli.fail(str(error))
    atomic_write_json(
        {
            "dataset": args.dataset,
            "route": source["route"],
            "files": [f.as_record() for f in fetched],
        },
        args.done,
    )
    downloaded = sum(f.downloaded for f in fetched)
    # where they are: a route may read files in place (Debian's installed Fashion-MNIST)
    where = ", ".join(sorted({str(f.path.parent) for f in fetched})) or args.downloads
    print(
        f"{args.dataset}: {len(fetched)} file(s) verified in {where} ({downloaded} downloaded now)"
    )


if __name__ == "__main__":
    main()
