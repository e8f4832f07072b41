"""Pack the trained tasks of one arch and method, in a given order, into one file.

Masks are stored at 1 bit per weight (ternary: 2), keyed by parameter name, with each
task's head, class names, the arch, the backbone's sha256 and the threshold. The file
is safetensors (see docs/pack-format.md); per-layer statistics go to --stats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback import cli
from piggyback.checkpoints import CheckpointError
from piggyback.packing import PackError, pack_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "checkpoints", type=Path, nargs="+", help="task checkpoints from train.py, in task order"
    )
    parser.add_argument("--out", type=Path, required=True, help="packed file (.safetensors)")
    parser.add_argument("--stats", type=Path, help="per-layer share of 0 and -1 (.tsv)")
    args = parser.parse_args()
    try:
        manifest = pack_tasks(args.checkpoints, args.out, args.stats)
    except (CheckpointError, PackError) as error:
        cli.fail(str(error))
    size = args.out.stat().st_size
    print(f"packed {', '.join(manifest['ordering'])} into {args.out} ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
