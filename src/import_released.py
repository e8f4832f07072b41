"""Import one of the authors' released mask files (vgg16_binary.pt and the like, from their
Box folder) as this project's packed file, which evaluate.py then evaluates like a
trained one: no training, and no code from the file is run.

Each dataset's masks are mapped from the authors' module indices (--kind says which of
their networks) onto torchvision weight names and stored at 1 bit per weight (method
piggyback; a file whose masks hold -1, stored by the authors as the byte 255, becomes
piggyback_ternary, 2 bits), with the head and its class count. The masks only fit the
backbone numbers they were trained on: --weights names them (the same as evaluate.py
will get), and a warning says so when they are not known to be the authors'.
See docs/released-masks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from piggyback.data.images import error_message
from piggyback.interface import cli
from piggyback.methods.registry import released_methods
from piggyback.model.backbones import BackboneError
from piggyback.packs.packed_file import ENCODINGS, PackError
from piggyback.released.files import ARCH_KINDS, ReleasedError
from piggyback.released.importing import AUTHORS_WEIGHTS, import_released, save_backbone_weights

EXAMPLE = """example:
  python src/import_released.py downloads/resnet50_binary.pt --kind resnet50 \\
    --arch resnet50 --weights resources/weights/resnet50.IMAGENET1K_V1.pth \\
    --encoding bits --out results/released/packed/resnet50/piggyback/run0.safetensors
  python src/evaluate.py results/released/packed/resnet50/piggyback/run0.safetensors \\
    --arch resnet50 --weights resources/weights/resnet50.IMAGENET1K_V1.pth \\
    --tasks-json '{"flowers": {"data": "data/flowers", "transform": "standard"}}' \\
    --image-size 224 --batch-size 64 --workers 8 \\
    --out results/released/eval/resnet50/piggyback/run0.json
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE
    )
    parser.add_argument("released", type=Path, help="the authors' file, e.g. vgg16_binary.pt")
    parser.add_argument(
        "--kind",
        choices=ARCH_KINDS,
        required=True,
        help="the authors' network the file is for (their resnet50_diff: resnet50, with "
        "--weights or --authors-backbone naming that ResNet-50)",
    )
    cli.add_arch_arguments(parser)
    parser.add_argument(
        "--authors-backbone",
        type=Path,
        metavar="FILE",
        help="the authors' pytorch_backbone file (a pickled model, read without running "
        "code) to use instead of --weights; needs --save-weights",
    )
    parser.add_argument(
        "--save-weights",
        type=Path,
        metavar="FILE",
        help="where to write that backbone as a state dict (.pth): the --weights to give "
        "evaluate.py, or an arch's `weights:` in the config",
    )
    parser.add_argument("--datasets", nargs="+", help="import only these (default: all)")
    parser.add_argument(
        "--method",
        choices=released_methods(),
        help="default: piggyback, or piggyback_ternary if a mask holds -1",
    )
    parser.add_argument("--sha256", help="the file's expected sha256, checked first")
    parser.add_argument("--out", type=Path, required=True, help="packed file (.safetensors)")
    parser.add_argument("--stats", type=Path, help="per-layer share of 0 and -1 (.tsv)")
    parser.add_argument(
        "--encoding", choices=ENCODINGS, required=True, help="as pack.py's: bits or entropy"
    )
    args = parser.parse_args()
    weights = args.weights
    try:
        if args.authors_backbone is not None:
            if args.save_weights is None:
                cli.fail("--authors-backbone needs --save-weights FILE: evaluate.py reads that")
            save_backbone_weights(args.authors_backbone, args.save_weights)
            weights = args.save_weights
        result = import_released(
            args.released,
            args.kind,
            cli.arch_spec(args),
            args.out,
            arch=args.arch,
            weights=weights,
            weights_dir=args.weights_dir,
            datasets=args.datasets,
            method=args.method,
            sha256=args.sha256,
            encoding=args.encoding,
            stats_out=args.stats,
            authors_backbone=args.authors_backbone,
        )
    except (BackboneError, PackError, ReleasedError, OSError) as error:
        cli.fail(error_message(error))
    if not result.weights_known:
        print(
            f"warning: weights {weights} are not known to be those the authors' {args.kind} "
            f"masks were trained on ({AUTHORS_WEIGHTS[args.kind].authors_file}; "
            f"{AUTHORS_WEIGHTS[args.kind].note}): errors may differ from theirs",
            file=sys.stderr,
        )
    manifest = result.manifest
    size = args.out.stat().st_size / 2**20
    print(
        f"imported {', '.join(manifest['ordering'])} from {args.released} into {args.out} "
        f"as {manifest['method']} ({size:.2f} MiB)"
    )


if __name__ == "__main__":
    main()
