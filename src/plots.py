"""Draw one of the report's figures (a PNG) and write the numbers it shows (a TSV).

A figure reads the table (``--table``) or records (``--records``), a JSON list of objects
each naming a file (``file``) and what it belongs to (``arch``, ``method``, ``ordering``,
``run``, ``dataset``, ``rule``); its entry in ``FIGURES`` says which, and which config
values it takes after that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from piggyback.files.atomic import atomic_write
from piggyback.interface import cli
from piggyback.report.plots import FIGURES, TABLE


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
    figure, data = FIGURES[args.figure].draw(*arguments(args))
    try:
        atomic_write(args.out, lambda tmp: figure.savefig(tmp, format="png"))
        atomic_write(args.data, lambda tmp: data.to_csv(tmp, sep="\t", index=False))
    except OSError as error:
        cli.fail(f"cannot write the figure: {error}")
    print(f"wrote {args.out} and {args.data}")


def arguments(args: argparse.Namespace) -> list[Any]:
    """What the figure reads, then the config values it takes, from the flags."""
    plot = FIGURES[args.figure]
    if plot.reads == TABLE:
        if args.table is None:
            cli.fail(f"the {args.figure} figure needs --table")
        read = pd.read_csv(args.table, sep="\t")
    else:
        read = json.loads(args.records)
    values = {"tolerance": args.tolerance, "classes": json.loads(args.classes)}
    return [read, *(values[name] for name in plot.takes)]


if __name__ == "__main__":
    main()
