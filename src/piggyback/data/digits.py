"""Real small image tasks from scikit-learn's bundled handwritten digits (8x8, 1,797
images), written as ImageFolder trees: the data behind the demo and the tests, the
only real images available on a machine without internet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VIEWS = ("plain", "mirrored", "rotated", "inverted")


def digit_images(view: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 8x8 images (0-255) in the given view, with labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    if view == "mirrored":
        images = images[:, :, ::-1]
    elif view == "rotated":
        images = np.rot90(images, k=1, axes=(1, 2))
    elif view == "inverted":
        images = 255 - images
    elif view != "plain":
        raise ValueError(f"unknown digits view {view!r}: expected one of {', '.join(VIEWS)}")
    return np.ascontiguousarray(images), digits.target


def write_digits_task(
    out: Path,
    digits: list[int],
    view: str = "plain",
    test_fraction: float = 0.3,
    per_class: int | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Write ``out/{train,test}/digit_<d>/<index>.png`` for the chosen digits.

    The split is drawn per class with a fixed seed, so it is the same on every machine;
    ``per_class`` caps the images used per class (to keep the demo small).
    """
    images, labels = digit_images(view)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for digit in digits:
        indices = np.flatnonzero(labels == digit)
        rng.shuffle(indices)
        if per_class is not None:
            indices = indices[:per_class]
        n_test = max(1, round(len(indices) * test_fraction))
        for split, chosen in (("test", indices[:n_test]), ("train", indices[n_test:])):
            folder = Path(out) / split / f"digit_{digit}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(images[index], mode="L").save(folder / f"{index:04d}.png")
            counts[split] += len(chosen)
    return counts
