"""Draw one of the report's figures (a PNG) and write the numbers it shows (a TSV).

The inputs come as records, a JSON list of objects each naming a file (``file``) and
what it belongs to (``arch``, ``method``, ``ordering``, ``run``, ``dataset``, ``rule``);
the reference and paired-differences figures read the table instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from piggyback.files.atomic import atomic_write
from piggyback.interface import cli
from piggyback.report.plots import FIGURES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=FIGURES)
    parser.add_argument("--records", default="[]", help="JSON list of input records")
    parser.add_argument("--classes", default="{}", help="JSON {dataset: classes} (error_curves)")
    parser.add_argument("--table", type=Path, help="table.tsv (reference, paired_differences)")
    parser.add_argument("--tolerance", type=float, help="points (reference; none: no band)")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    parser.add_argument("--data", type=Path, required=True, help="the numbers it shows (.tsv)")
    args = parser.parse_args()
    if args.figure in ("reference", "paired_differences"):
        if args.table is None:
            cli.fail(f"the {args.figure} figure needs --table")
        table = pd.read_csv(args.table, sep="\t")
        if args.figure == "reference":
            figure, data = FIGURES["reference"](table, args.tolerance)
        else:
            figure, data = FIGURES["paired_differences"](table)
    elif args.figure == "error_curves":
        figure, data = FIGURES["error_curves"](json.loads(args.records), json.loads(args.classes))
    else:
        figure, data = FIGURES[args.figure](json.loads(args.records))
    try:
        atomic_write(args.out, lambda tmp: figure.savefig(tmp, format="png"))
        atomic_write(args.data, lambda tmp: data.to_csv(tmp, sep="\t", index=False))
    except OSError as error:
        cli.fail(f"cannot write the figure: {error}")
    print(f"wrote {args.out} and {args.data}")


if __name__ == "__main__":
    main()
