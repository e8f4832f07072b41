"""Fetch one torchvision ImageNet weight file and verify it by the sha256 prefix in
torchvision's name for it (resnet50-0676ba61.pth: the sha256 starts with 0676ba61).

A file already at --out that verifies is kept and nothing is downloaded, so weights can
be copied in by hand on a machine without internet; --url fetches from a mirror.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback.data.download import DownloadError
from piggyback.interface import cli
from piggyback.model.backbones import BackboneError
from piggyback.weights.torchvision import fetch_backbone_weights

EXAMPLE = """example:
  python src/fetch_weights.py --builder resnet50 --weights IMAGENET1K_V1 \\
    --out resources/weights/resnet50-0676ba61.pth
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE
    )
    parser.add_argument("--builder", required=True, help="torchvision model builder, e.g. resnet50")
    parser.add_argument(
        "--weights",
        default="IMAGENET1K_V1",
        help="torchvision weights enum name (default: IMAGENET1K_V1; never DEFAULT)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        required=True,
        help="where to put the file, e.g. resources/weights/resnet50-0676ba61.pth",
    )
    parser.add_argument(
        "--url", metavar="URL", help="fetch from this mirror URL (or local path) instead"
    )
    cli.add_progress_argument(parser)
    args = parser.parse_args()
    if args.weights == "DEFAULT":
        cli.fail("weights 'DEFAULT' change meaning between torchvision releases; name them")
    try:
        fetched = fetch_backbone_weights(
            args.builder, args.weights, args.out, url=args.url, progress=args.progress
        )
    except (BackboneError, DownloadError) as error:
        cli.fail(str(error))
    state = "downloaded" if fetched.downloaded else "already there, verified"
    print(f"{args.out}: {state} (sha256 {fetched.sha256[:16]}...)")


if __name__ == "__main__":
    main()
