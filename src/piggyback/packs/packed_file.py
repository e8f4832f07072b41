"""The packed file's container: every task of one arch, method (and, for sequential
methods, ordering) and run in one file; the method decides what each task stores
(:mod:`piggyback.stages.packing` asks it).

The file is safetensors (a JSON header and raw little-endian tensors), so it loads
without unpickling anything and other programs can decode it; ``docs/pack-format.md``
gives the layout. This module is the container: the manifest, its checksums, and bit
planes. A plane is one bit per weight (``bits`` encoding, format version 1), or
entropy-coded (:mod:`piggyback.packs.entropy`; version 2), close to its empirical entropy: far
below 1 bit per weight when most bits agree. Piggyback stores its masks as planes,
PackNet the bits of each weight's owner (version 3, which its method asks for).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from piggyback.files.atomic import atomic_write
from piggyback.model.checkpoints import TaskCheckpoint, tensors_sha256
from piggyback.packs.entropy import PlaneError, decode_plane, encode_plane

PACK_FORMAT = "piggyback-pack"
PACK_VERSION = 1  # what the default ``bits`` encoding writes
ENTROPY_VERSION = 2  # files with entropy-coded planes: a version 1 reader would misread them
OWNERS_VERSION = 3  # files with weight owners (PackNet's), which older readers do not know
READ_VERSIONS = (PACK_VERSION, ENTROPY_VERSION, OWNERS_VERSION)
PLAIN_BITS = "bits"  # one bit per weight: what a plane is unless the manifest says otherwise
ENCODINGS = (PLAIN_BITS, "entropy")
ENTROPY_STATS_COLUMNS = ["entropy_bits_per_weight", "stored_bits_per_weight"]


class PackError(ValueError):
    """A packed file is unusable as asked; the message names the file and the cause."""


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Flattened boolean tensor -> uint8 bytes, 8 entries a byte, first entry in the
    most significant bit (``numpy.packbits`` order); the last byte is zero-padded."""
    return torch.from_numpy(np.packbits(keep.detach().cpu().numpy().reshape(-1)))


def unpack_bits(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    shape = tuple(shape)
    count = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


class PackContents:
    """What one packed file will hold; the method fills it in (``Method.pack``). ``stores``
    is what each of its tasks holds besides the head (the method's registry entry says);
    ``minimum_version`` the oldest format version that knows what the method stores."""

    def __init__(self, encoding: str, paths: list[Path | str], stores: str):
        self.encoding = encoding
        self.paths = paths
        self.stores = stores
        self.minimum_version = PACK_VERSION
        self.tensors: dict[str, torch.Tensor] = {}
        self.encodings: dict[str, str] = {}  # planes not stored as plain bits
        self.tasks: dict[str, Any] = {}
        self.layers: list[dict[str, Any]] = []  # statistics rows, one per task and layer
        self.manifest: dict[str, Any] = {}  # the method's own manifest fields

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self.tensors[key] = tensor.detach().cpu().contiguous()

    def put_plane(self, key: str, bits: torch.Tensor, within: torch.Tensor | None = None) -> int:
        """Store a boolean plane in the file's encoding; returns the bits it costs. An
        entropy-coded plane covers only the entries where ``within`` is set (the reader
        passes the same ``within``); a ``bits`` plane always covers every entry."""
        if self.encoding == PLAIN_BITS:
            packed = pack_bits(bits)
        else:
            values = bits.cpu().numpy().reshape(-1)
            if within is not None:
                values = values[within.cpu().numpy().reshape(-1)]
            packed = torch.frombuffer(bytearray(encode_plane(values)), dtype=torch.uint8)
            self.encodings[key] = self.encoding
        self.tensors[key] = packed
        return 8 * packed.numel()

    def add_task(self, checkpoint: TaskCheckpoint, **fields: Any) -> None:
        task = checkpoint.dataset
        if task in self.tasks:
            self.fail(f"task {task!r} appears twice")
        classes = checkpoint.classes  # names, or only their count (released masks)
        self.tasks[task] = {
            "storage": self.stores,
            "classes": classes if isinstance(classes, int) else list(classes),
            "seed": checkpoint.seed,
            "trained_epoch": checkpoint.epoch,
            "trained_test_top1_error": checkpoint.test_top1_error,
            **fields,
        }
        if checkpoint.preprocessing is not None:
            self.tasks[task]["preprocessing"] = checkpoint.preprocessing

    def agree_on(self, field: str, values: list[Any]) -> None:
        """Every checkpoint has the first one's value of ``field`` (``values``: each
        checkpoint's, in order)."""
        first = values[0]
        for path, value in zip(self.paths, values, strict=True):
            if value != first:
                self.fail(
                    f"{path} has {field} = {value!r}, but {self.paths[0]} has {first!r}: one "
                    f"packed file holds one arch, method and backbone, and the same {field}"
                )

    def fail(self, message: str) -> None:
        raise PackError(message)


@dataclass
class PackedFile:
    """A packed file read whole, its checksums verified: the manifest and the tensors."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def has(self, key: str) -> bool:
        return key in self.tensors

    def tensors_under(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose key starts with ``prefix``, keyed by the rest."""
        return {k.removeprefix(prefix): v for k, v in self.tensors.items() if k.startswith(prefix)}

    def head(self, task: str) -> dict[str, torch.Tensor]:
        return self.tensors_under(f"{self.require(task)}/head/")

    def require(self, task: str) -> str:
        if task not in self.manifest["tasks"]:
            held = ", ".join(self.manifest["ordering"])
            raise PackError(f"{self.path} holds no task {task!r}; it holds {held}")
        return task

    def plane(self, key: str, shape: list[int], within: torch.Tensor | None = None) -> torch.Tensor:
        """A stored plane as a boolean tensor of ``shape``. An entropy-coded plane written
        with ``within`` covers only those entries; elsewhere the result is False."""
        encoding = self.manifest.get("encodings", {}).get(key, PLAIN_BITS)
        if encoding == PLAIN_BITS:
            return unpack_bits(self.tensors[key], shape)
        if within is None:
            return self._decode(key, int(np.prod(shape))).reshape(shape)
        plane = torch.zeros(shape, dtype=torch.bool)
        plane[within] = self._decode(key, int(within.sum()))
        return plane

    def _decode(self, key: str, count: int) -> torch.Tensor:
        try:
            return torch.from_numpy(decode_plane(self.tensors[key].numpy(), count))
        except PlaneError as error:
            raise PackError(f"{self.path}: tensor {key} does not decode: {error}") from error


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PackError(f"packed file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise PackError(f"{path} is not a readable packed file: {error}") from error
    try:
        text = metadata["piggyback"]
        manifest = json.loads(text)
    except (KeyError, json.JSONDecodeError) as error:
        raise PackError(f"{path} has no piggyback manifest: not written by pack.py") from error
    if hashlib.sha256(text.encode()).hexdigest() != metadata.get("piggyback_sha256"):
        raise PackError(f"{path} fails its manifest checksum: it was edited or damaged")
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") not in READ_VERSIONS:
        raise PackError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this code reads {PACK_FORMAT!r} versions {', '.join(map(str, READ_VERSIONS))}"
        )
    unknown = set(manifest.get("encodings", {}).values()) - set(ENCODINGS)
    if unknown:
        raise PackError(f"{path} uses mask encodings {sorted(unknown)} this code cannot read")
    return manifest


def read_pack(path: Path) -> PackedFile:
    """The whole file, its manifest and content checksums verified, so a truncated or
    edited file is refused."""
    path = Path(path)
    manifest = read_manifest(path)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if tensors_sha256(tensors) != manifest["content_sha256"]:
        raise PackError(f"{path} fails its content checksum: it was truncated or edited")
    return PackedFile(path, manifest, tensors)


def write_pack(
    contents: PackContents,
    out: Path,
    base: dict[str, Any],
    stats_out: Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``contents`` to ``out`` (atomically) under a manifest of ``base`` (arch,
    method, backbone...) and what the contents add; returns the manifest."""
    manifest = {
        "format": PACK_FORMAT,
        "version": format_version(contents),
        **base,
        "ordering": list(contents.tasks),
        "bit_order": "msb-first",
        "tasks": contents.tasks,
        **contents.manifest,
        "content_sha256": tensors_sha256(contents.tensors),
    }
    if provenance is not None:
        manifest["source"] = provenance
    if contents.encodings:
        manifest["encodings"] = contents.encodings
    text = json.dumps(manifest, sort_keys=True)
    # The manifest's own checksum: with content_sha256 inside it, this covers the file.
    metadata = {"piggyback": text, "piggyback_sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write(out, lambda tmp: save_file(contents.tensors, str(tmp), metadata=metadata))
    if stats_out is not None:
        write_stats(contents.layers, stats_out, with_entropy=contents.encoding != PLAIN_BITS)
    return manifest


def format_version(contents: PackContents) -> int:
    """The oldest version whose readers read the file: the one the method asks for (owners
    need version 3), and version 2 for entropy-coded planes; plain bit planes and whole
    networks are version 1."""
    return max(contents.minimum_version, ENTROPY_VERSION if contents.encodings else PACK_VERSION)


def write_stats(rows: list[dict[str, Any]], out: Path, with_entropy: bool) -> None:
    """Per-layer rows and a ``TOTAL`` row per task, weighted by layer size. The columns
    are the method's (Piggyback: shares of 0 and -1; PackNet: the share each owner
    holds). The entropy columns are written for entropy-coded files; ``bits`` files keep
    the version 1 table (every plane costs its nominal ``bits_per_weight``, padding to a
    byte aside)."""
    import pandas as pd

    columns = list(rows[0]) if rows else ["task", "layer", "weights"]
    if not with_entropy:
        columns = [c for c in columns if c not in ENTROPY_STATS_COLUMNS]
    weighted = [c for c in columns if c.endswith(("_pct", "bits_per_weight"))]
    table = pd.DataFrame(rows, columns=columns)
    totals = []
    for task, group in table.groupby("task", sort=False):
        weights = group["weights"].sum()
        total = {"task": task, "layer": "TOTAL", "weights": weights}
        for column in weighted:
            total[column] = (group[column] * group["weights"]).sum() / weights
        totals.append(total)
    table = pd.concat([table, pd.DataFrame(totals, columns=table.columns)], ignore_index=True)
    for column in set(ENTROPY_STATS_COLUMNS) & set(columns):
        table[column] = table[column].map("{:.6g}".format)  # near all-ones: far below 0.01
    atomic_write(out, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.4f"))
