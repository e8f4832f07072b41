"""Fetching torchvision's ImageNet weight files into the project's resources folder.

The file keeps torchvision's name (``resnet50-0676ba61.pth``), which is how backbones
find it, and whose hash part is the start of its sha256: that is what is verified, so a
mirror or a file copied in by hand is as trustworthy as the official download.
"""

from __future__ import annotations

from pathlib import Path

from piggyback.backbones import weights_url
from piggyback.downloads import DownloadError, FetchedFile, download, hash_prefix_in_name


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
    name = Path(official).name
    out = Path(out)
    if out.name != name:
        raise DownloadError(
            f"{out}: {builder} {enum_name} weights must keep torchvision's file name "
            f"{name!r} (backbones look them up by it, and it carries the sha256 prefix)"
        )
    prefix = hash_prefix_in_name(name)
    if prefix is None:
        raise DownloadError(f"{name} carries no sha256 prefix in its name; cannot verify it")
    return download(url or official, out, sha256=prefix, progress=progress)
