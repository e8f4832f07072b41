"""Aggregate evaluation results into the paper's table, with the evidence for each cell.

Writes table.md (per arch, the paper's layout: datasets as rows, the methods side by
side, each cell's error with its 95% interval and its paired test against Piggyback,
the storage of all tasks; then each method's details against the published numbers) and
table.tsv (one row per cell, every number of table.md), and prints the verdict
(docs/statistics.md). Each evaluation JSON is read with its per-image file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from piggyback.files.atomic import atomic_write, atomic_write_text
from piggyback.interface import cli
from piggyback.report.comparisons import PairingError
from piggyback.report.markdown import to_markdown, verdict
from piggyback.report.storage import storage_data, storage_totals
from piggyback.report.tables import load_reference, load_results, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="evaluation JSON files")
    parser.add_argument(
        "--reference",
        type=Path,
        help="TSV: method, arch, dataset, error, source (config: reference.file)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="points that widen each cell's 95%% interval for the verdict: hardware and "
        "library noise (config: reference.tolerance); given with --reference, and only then",
    )
    parser.add_argument(
        "--classes", required=True, help="JSON {dataset: number of classes}, for chance error"
    )
    parser.add_argument("--archs", nargs="+", required=True, help="table order")
    parser.add_argument("--datasets", nargs="+", required=True, help="row order")
    parser.add_argument("--methods", nargs="+", required=True, help="the config's methods")
    parser.add_argument(
        "--orderings", default="{}", help="JSON {ordering: [datasets]}, for sequential methods"
    )
    parser.add_argument(
        "--storage-records",
        default="[]",
        help="JSON list of the packed files (and backbone weights) for the storage row, "
        "as the storage figure reads them",
    )
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--tsv", type=Path, required=True)
    args = parser.parse_args()
    if (args.reference is None) != (args.tolerance is None):
        parser.error("--reference and --tolerance go together: the config's reference block")
    try:
        reference = load_reference(args.reference) if args.reference else None
    except (OSError, ValueError) as error:
        cli.fail(f"cannot read the reference numbers: {error}")
    try:
        write_table(args, reference)
    except PairingError as error:
        cli.fail(str(error))
    except OSError as error:  # a full disk or a read-only folder
        cli.fail(f"cannot write the table: {error}")


def write_table(args: argparse.Namespace, reference) -> None:
    orderings = json.loads(args.orderings)
    results = load_results(args.results, args.methods, list(orderings))
    storage = storage_totals(storage_data(json.loads(args.storage_records)))
    table = summarize(results, reference, args.tolerance, json.loads(args.classes), storage)
    atomic_write(
        args.tsv, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
    )
    markdown = to_markdown(
        table, args.archs, args.datasets, args.methods, orderings, args.tolerance
    )
    atomic_write_text(markdown, args.markdown)
    print(f"wrote {args.markdown} and {args.tsv}")
    print("\n".join(verdict(table, args.tolerance)))


if __name__ == "__main__":
    main()
