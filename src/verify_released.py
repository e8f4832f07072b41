"""Check that one of the authors' released mask files is in place (put there by hand: Box
links are not plain file URLs) and, when its sha256 is known, that it is that file; then
write a marker. The workflow runs this on the submitting host before any import job, so
a missing file is reported at once, naming it and the Box folder to get it from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback.files.atomic import atomic_write_json
from piggyback.interface import cli
from piggyback.released.files import ReleasedError
from piggyback.released.importing import check_released_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "released", type=Path, help="the authors' file, e.g. downloads/vgg16_binary.pt"
    )
    parser.add_argument("--sha256", help="its expected sha256 (default: not checked)")
    parser.add_argument("--done", type=Path, required=True, help="marker to write (.json)")
    args = parser.parse_args()
    try:
        sha256 = check_released_file(args.released, args.sha256)
    except (ReleasedError, OSError) as error:
        cli.fail(str(error))
    record = {"file": args.released.name, "bytes": args.released.stat().st_size, "sha256": sha256}
    atomic_write_json(record, args.done)
    print(f"{args.released}: sha256 {sha256}{'' if args.sha256 else ' (none expected)'}")


if __name__ == "__main__":
    main()
