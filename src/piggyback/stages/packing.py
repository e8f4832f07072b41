"""Packing: the tasks' checkpoints of one series, in order, into one packed file
(:mod:`piggyback.packs.packed_file`); the method decides what each task stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.registry import load_method, method_entry
from piggyback.model.checkpoints import TaskCheckpoint
from piggyback.packs.packed_file import ENCODINGS, PLAIN_BITS, PackContents, PackError, write_pack


@dataclass
class PackResult:
    manifest: dict[str, Any]
    layers: list[dict[str, Any]]  # statistics rows, one per task (or owner) and layer

    def task_bits(self) -> dict[str, dict[str, float]]:
        """Per task with mask planes: ``weights``, ``stored_bits_per_weight`` (what the
        file spends on its planes, per masked weight) and ``entropy_bits_per_weight``."""
        totals: dict[str, dict[str, float]] = {}
        for row in self.layers:
            if "stored_bits_per_weight" not in row:
                continue
            total = totals.setdefault(row["task"], {"weights": 0, "stored": 0.0, "entropy": 0.0})
            total["weights"] += row["weights"]
            total["stored"] += row["stored_bits_per_weight"] * row["weights"]
            total["entropy"] += row["entropy_bits_per_weight"] * row["weights"]
        return {
            task: {
                "weights": t["weights"],
                "stored_bits_per_weight": t["stored"] / t["weights"],
                "entropy_bits_per_weight": t["entropy"] / t["weights"],
            }
            for task, t in totals.items()
        }


def pack(
    checkpoint_paths: list[Path],
    out: Path,
    stats_out: Path | None = None,
    encoding: str = PLAIN_BITS,
    ordering: str | None = None,
) -> PackResult:
    """Pack the tasks' checkpoints, in the order given, into ``out``: the manifest and
    the per-layer statistics. ``ordering`` names the order of a sequential method's
    tasks (recorded; the table is keyed by it)."""
    paths = [Path(p) for p in checkpoint_paths]
    checkpoints = [load_task_checkpoint(p) for p in paths]
    for path, checkpoint in zip(paths, checkpoints, strict=True):
        if checkpoint.role != "task":
            raise PackError(f"{path} is the {checkpoint.role} of a chain, not a task")
    return pack_checkpoints(checkpoints, paths, out, stats_out, encoding, ordering)


def pack_checkpoints(
    checkpoints: list[TaskCheckpoint],
    names: list[Path | str],
    out: Path,
    stats_out: Path | None = None,
    encoding: str = PLAIN_BITS,
    ordering: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> PackResult:
    """Pack task checkpoints already in memory (``names`` says where each came from, for
    messages); ``provenance``, if given, is recorded in the manifest as ``source``."""
    if encoding not in ENCODINGS:
        raise PackError(f"unknown mask encoding {encoding!r}: expected one of {ENCODINGS}")
    first = checkpoints[0]
    contents = PackContents(encoding, names, method_entry(first.method).stores)
    for field in ("arch", "method", "backbone_sha256"):
        contents.agree_on(field, [getattr(checkpoint, field) for checkpoint in checkpoints])
    load_method(first.method).pack(checkpoints, contents)
    base = {"arch": first.arch, "method": first.method, "backbone_sha256": first.backbone_sha256}
    manifest = write_pack(contents, out, {**base, "ordering_name": ordering}, stats_out, provenance)
    return PackResult(manifest, contents.layers)
