"""Runs a plan's sections in order, each measurement in what is left of its section's
time: skipped when too little is left, stopped by the timer when it overruns, recorded
as an error when it fails (the others go on), written to the report at once."""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from gpu_check.plan import OverBudget, Plan, time_limit
from gpu_check.report import Report
from gpu_check.tables import render
from piggyback.files.atomic import atomic_write_text


class Skip(Exception):
    """A measurement that cannot be made (what it builds on is missing)."""


def need(condition: object, reason: str) -> None:
    if not condition:
        raise Skip(reason)


def release(device: torch.device) -> None:
    """Free what the last measurement left, so that the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def say(line: str) -> None:
    """Progress, flushed at once: a run stopped at its limit keeps what it printed."""
    print(line, flush=True)


class GpuCheck:
    """Runs ``plan`` on ``device``: each of the plan's sections is the function of that
    name in ``sections``, called with this object, which it asks to ``measure``. Writes
    ``gpu_check.json`` into ``out`` after every measurement and ``gpu_check.md`` (the
    tables) at the end."""

    def __init__(
        self,
        plan: Plan,
        device: torch.device,
        out: Path,
        config: Path,
        sections: Mapping[str, Callable[[GpuCheck], None]],
        log: Callable[[str], None] = say,
    ):
        unplanned = sorted(sections.keys() - plan.sections.keys())
        if unplanned:
            raise ValueError(
                f"sections {unplanned} have no time in the {plan.mode} plan: give them "
                "seconds in sections and unit_s of gpu_check/plan.py"
            )
        unknown = sorted(plan.sections.keys() - sections.keys())
        if unknown:
            raise ValueError(
                f"the {plan.mode} plan's sections {unknown} have no function: add them to "
                "SECTIONS in gpu_check/sections.py"
            )
        self.plan, self.device, self.config, self.log = plan, device, config, log
        self.sections = sections
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.report = Report(plan, device, self.out)

    def run(self) -> dict[str, Any]:
        planned_end = self.started
        for section, seconds in self.plan.sections.items():
            planned_end += seconds
            self.section, self.section_end = section, planned_end
            self.sections[section](self)
        self.report.finish(round(time.monotonic() - self.started, 1))
        atomic_write_text(self.tables() + "\n", self.out / "gpu_check.md")
        return self.report.data

    def tables(self) -> str:
        return render(self.report, self.plan)

    def measure(self, name: str, figures: Callable[[], dict], **keys) -> dict:
        """One measurement of the running section, in what is left of the section's time
        and of its own limit; its record is ``name``, ``keys``, the figures and how it
        went."""
        section = self.section
        limit = self.plan.unit_s[section]
        left = min(limit, self.section_end - time.monotonic())
        record: dict[str, Any] = {"name": name, **keys}
        started = time.monotonic()
        if left < limit / 3:
            record.update(status="skipped", reason=f"{max(left, 0):.0f} s of its time left")
        else:
            try:
                with time_limit(left):
                    record.update(figures())
                record["status"] = "ok"
            except OverBudget:
                record.update(status="timeout", reason=f"stopped after {left:.0f} s")
            except Skip as reason:
                record.update(status="skipped", reason=str(reason))
            except Exception as error:  # recorded; the other measurements go on
                traceback.print_exc()
                record.update(status="error", reason=f"{type(error).__name__}: {error}")
            finally:
                release(self.device)
        record["seconds"] = round(time.monotonic() - started, 2)
        self.report.add(section, record)
        elapsed = time.monotonic() - self.started
        self.log(f"[{elapsed:6.1f} s] {section} {name}: {record['status']} {_brief(record)}")
        return record


def _brief(record: dict) -> str:
    if record["status"] != "ok":
        return record.get("reason", "")
    if "img_s" in record:
        peak = f", peak {record['peak_mem_mb']:,.0f} MB" if "peak_mem_mb" in record else ""
        return f"{record['img_s']:,.1f} img/s{peak}"
    if "passed" in record:
        return "passed" if record["passed"] else "FAILED"
    return ""
