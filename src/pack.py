"""Pack the trained tasks of one arch and method (and ordering, for a sequential method),
in the order given, into one file; the method decides what a task stores.

Piggyback's masks are stored at 1 bit per weight (ternary: 2), keyed by parameter name;
PackNet's network once, with each weight's owner in a few bits; finetune's whole network
per task; every task's head and class names, the arch and the backbone's sha256 beside.
With ``--encoding entropy`` each bit plane is entropy-coded instead (format version 2),
close to its empirical entropy: well below 1 bit per weight when most weights are kept.
The file is safetensors (see docs/pack-format.md); per-layer statistics go to --stats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from piggyback.interface import cli
from piggyback.model.checkpoints import CheckpointError
from piggyback.packs.packed_file import ENCODINGS, PackError
from piggyback.stages.packing import pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "checkpoints", type=Path, nargs="+", help="task checkpoints from train.py, in task order"
    )
    parser.add_argument("--out", type=Path, required=True, help="packed file (.safetensors)")
    parser.add_argument(
        "--stats",
        type=Path,
        help="per-layer share of 0 and -1, and (entropy encoding) entropy and stored bits "
        "per weight (.tsv)",
    )
    parser.add_argument(
        "--ordering", help="the ordering's name, for a sequential method's chain of tasks"
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        required=True,
        help="bit planes as plain bits, 1 per weight (format version 1), or entropy-coded "
        "(version 2) (config: pack_encoding)",
    )
    args = parser.parse_args()
    try:
        result = pack(args.checkpoints, args.out, args.stats, args.encoding, args.ordering)
    except (CheckpointError, PackError) as error:
        cli.fail(str(error))
    manifest = result.manifest
    size = args.out.stat().st_size
    print(f"packed {', '.join(manifest['ordering'])} into {args.out} ({size / 2**20:.2f} MiB)")
    if "coverage" in manifest:
        coverage = manifest["coverage"]
        alone = ", ".join(f"{kind} {n}" for kind, n in coverage["left_alone"].items())
        print(
            f"  masks cover {coverage['masked']} of {coverage['total']} backbone parameters "
            f"({100 * coverage['masked_share']:.2f}%); left alone: {alone or 'none'}"
        )
    for task, bits in result.task_bits().items():
        print(
            f"  {task}: masks stored at {bits['stored_bits_per_weight']:.4f} bits per weight "
            f"({args.encoding}), empirical entropy {bits['entropy_bits_per_weight']:.4f} "
            f"bits per weight, {bits['weights']} masked weights"
        )


if __name__ == "__main__":
    main()
