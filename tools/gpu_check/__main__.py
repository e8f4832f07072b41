"""The GPU check: training and evaluation speed of every arch and method with the speed
switches off and on, fp32, TF32 and bf16 side by side, the largest batch, torch.compile,
peak memory, the input pipelines' feed rate, bf16 correctness and the paper comparison's
GPU-hours, in under 8 minutes.

Run from the repository root: PYTHONPATH=src:tools python3 -m gpu_check --out DIR
Writes DIR/gpu_check.json (every figure, rewritten after each measurement) and
DIR/gpu_check.md (the tables, also printed last). --cpu runs the same code at toy sizes
(the test suite does). See docs/performance.md, "How to measure on a GPU".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gpu_check.plan import CPU_PLAN, GPU_PLAN
from gpu_check.runner import GpuCheck
from gpu_check.sections import SECTIONS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures")
    parser.add_argument("--cpu", action="store_true", help="toy sizes on the CPU (tests)")
    parser.add_argument(
        "--budget",
        type=float,
        help=f"seconds for the whole run, shared as planned (default: "
        f"{sum(GPU_PLAN.sections.values()):.0f} on a GPU)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("config/config.yaml"),
        help="the paper's config, for the projection's methods (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.cpu:  # one thread: a loaded machine's cores slow two threads down many times
        plan, device = CPU_PLAN, torch.device("cpu")
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        plan, device = GPU_PLAN, torch.device("cuda", torch.cuda.current_device())
    else:
        sys.exit("error: no CUDA device here; --cpu runs the CPU mode")
    if args.budget is not None:
        plan = plan.scaled(args.budget)
    check = GpuCheck(plan, device, args.out, args.config, SECTIONS)
    report = check.run()
    print(f"\nwrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}\n")
    print(check.tables(), flush=True)
    errors = [
        f"{section}: {record['name']}"
        for section in plan.sections
        for record in report[section]
        if record["status"] == "error"
    ]
    if errors:
        sys.exit(f"measurements that failed: {', '.join(errors)}")


if __name__ == "__main__":
    main()
