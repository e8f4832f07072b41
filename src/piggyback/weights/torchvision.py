"""Fetching torchvision's ImageNet weight files into the project's resources folder.

torchvision's file name (``resnet50-0676ba61.pth``) carries the start of the file's
sha256: that is what is verified, whatever name the file gets here, so a mirror or a
file copied in by hand is as trustworthy as the official download.
"""

from __future__ import annotations

from pathlib import Path

from piggyback.data.download import DownloadError, FetchedFile, download, hash_prefix_in_name
from piggyback.model.backbones import weights_url


def fetch_backbone_weights(
    builder: str,
    enum_name: str,
    out: Path,
    url: str | None = None,
    progress: bool = False,
) -> FetchedFile:
    """Make ``out`` hold ``builder``'s ``enum_name`` weights, fetched from torchvision's
    URL or from ``url`` (a mirror); a file already at ``out`` that verifies is kept."""
    official = weights_url(builder, enum_name)
    prefix = hash_prefix_in_name(official)
    if prefix is None:
        raise DownloadError(
            f"{Path(official).name} carries no sha256 prefix in its name; cannot verify it"
        )
    return download(url or official, Path(out), sha256=prefix, progress=progress)
