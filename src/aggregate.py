"""Aggregate evaluation results into the paper's table and compare with the reference.

Writes table.md (datasets x archs, one block per method and, for a sequential method,
per ordering; mean ± std over runs, reference and difference beside each cell) and
table.tsv (long format), and prints a short verdict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piggyback import cli
from piggyback.atomic import atomic_write, atomic_write_text
from piggyback.report.tables import load_reference, load_results, summarize, to_markdown, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="evaluation JSON files")
    parser.add_argument("--reference", type=Path, help="TSV: method, arch, dataset, error, source")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points (default: 1.0)")
    parser.add_argument(
        "--classes", required=True, help="JSON {dataset: number of classes}, for chance error"
    )
    parser.add_argument("--archs", nargs="+", required=True, help="column order")
    parser.add_argument("--datasets", nargs="+", required=True, help="row order")
    parser.add_argument("--methods", nargs="+", required=True, help="block order")
    parser.add_argument(
        "--orderings", default="{}", help="JSON {ordering: [datasets]}, for sequential methods"
    )
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--tsv", type=Path, required=True)
    args = parser.parse_args()
    try:
        reference = load_reference(args.reference) if args.reference else None
    except (OSError, ValueError) as error:
        cli.fail(f"cannot read the reference numbers: {error}")
    try:
        write_table(args, reference)
    except OSError as error:  # a full disk or a read-only folder
        cli.fail(f"cannot write the table: {error}")


def write_table(args: argparse.Namespace, reference) -> None:
    table = summarize(
        load_results(args.results), reference, args.tolerance, json.loads(args.classes)
    )
    atomic_write(
        args.tsv, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    )
    markdown = to_markdown(
        table, args.archs, args.datasets, args.methods, json.loads(args.orderings), args.tolerance
    )
    atomic_write_text(markdown, args.markdown)
    print(f"wrote {args.markdown} and {args.tsv}")
    print("\n".join(verdict(table, args.tolerance)))


if __name__ == "__main__":
    main()
