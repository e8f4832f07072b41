"""The table's statistics (docs/statistics.md): a 95% interval per cell, the paired
comparison of two methods on the same test images, Holm's correction over a table's
comparisons, and the verdict against a published number.

Errors are in points (percent), as in the table. Torch-free and pandas-free: plain
numbers and numpy arrays in, plain numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
SIGNIFICANCE = 0.05
Z = float(stats.norm.ppf(1 - (1 - LEVEL) / 2))


def clopper_pearson(errors: float, images: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval of an error rate, in points. ``errors`` may be a mean
    over runs: the beta quantiles that define the interval are defined for it too."""
    if images <= 0:
        raise ValueError(f"an interval needs at least one image, not {images}")
    if not 0 <= errors <= images:
        raise ValueError(f"{errors} errors out of {images} images")
    alpha = 1 - level
    low = 0.0 if errors == 0 else stats.beta.ppf(alpha / 2, errors, images - errors + 1)
    high = 1.0 if errors == images else stats.beta.ppf(1 - alpha / 2, errors + 1, images - errors)
    return 100.0 * float(low), 100.0 * float(high)


def cell_interval(
    errors_per_run: Sequence[float], images: int, level: float = LEVEL
) -> tuple[float, float]:
    """A cell's interval. One run: Clopper-Pearson, which accounts for test-set sampling
    alone. Several runs on the same test images: test-set sampling does not shrink with
    more runs (they share the images), so each side is the mean error's Clopper-Pearson
    half-width and a t interval's half-width over the runs' errors (training randomness)
    added in quadrature: an approximation that treats the two as independent."""
    runs = np.asarray(errors_per_run, dtype=float)
    if runs.size == 0:
        raise ValueError("a cell needs at least one run")
    low, high = clopper_pearson(float(runs.mean()), images, level)
    if runs.size == 1:
        return low, high
    error = 100.0 * float(runs.mean()) / images
    spread = t_half_width(100.0 * runs / images, level)
    return max(0.0, error - math.hypot(error - low, spread)), min(
        100.0, error + math.hypot(high - error, spread)
    )


def t_half_width(values: np.ndarray, level: float = LEVEL) -> float:
    """Half-width of Student's t interval of the mean of ``values``."""
    count = len(values)
    quantile = stats.t.ppf(1 - (1 - level) / 2, count - 1)
    return float(quantile * np.std(values, ddof=1) / math.sqrt(count))


def standard_error(low: float, high: float) -> float:
    """The standard error a normal interval as wide as [low, high] would have."""
    return (high - low) / (2 * Z)


# -- paired comparisons ----------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """A method against the baseline on the same images: the difference of their errors
    (method minus baseline, points), its 95% interval, the two-sided exact p value, and
    the images on which the method did worse (``worse``) and better (``better``)."""

    difference: float
    low: float
    high: float
    p: float
    worse: int
    better: int
    images: int


def paired_comparison(method_wrong: np.ndarray, baseline_wrong: np.ndarray) -> Paired:
    """``method_wrong`` and ``baseline_wrong``: (runs, images) booleans, the same images
    in the same order. One run each: McNemar's exact test (a binomial test on the
    discordant images at 1/2) and Newcombe's hybrid score interval. Several runs: each
    image's error averaged over its runs, then an exact sign test on the images whose
    averages differ and a t interval over the per-image differences (images are the
    independent unit; the runs' spread shows in the cells' intervals)."""
    method = np.atleast_2d(np.asarray(method_wrong, dtype=bool))
    baseline = np.atleast_2d(np.asarray(baseline_wrong, dtype=bool))
    if method.shape[1] != baseline.shape[1] or method.shape[1] == 0:
        raise ValueError("a paired comparison needs the same, non-empty set of images")
    per_image = method.mean(axis=0) - baseline.mean(axis=0)
    worse, better = int((per_image > 0).sum()), int((per_image < 0).sum())
    images = per_image.size
    p = sign_test(worse, better)
    if method.shape[0] == baseline.shape[0] == 1:
        both = int((method[0] & baseline[0]).sum())
        low, high = newcombe_paired(both, worse, better, images - both - worse - better)
    else:
        low, high = _t_interval(per_image)
    return Paired(100.0 * float(per_image.mean()), low, high, p, worse, better, images)


def sign_test(worse: int, better: int) -> float:
    """Two-sided exact binomial test of ``worse`` out of ``worse + better`` at 1/2: on the
    discordant images of one run each, McNemar's exact test."""
    if worse + better == 0:
        return 1.0
    return float(stats.binomtest(worse, worse + better, 0.5).pvalue)


def wilson(successes: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of a proportion (as a fraction)."""
    z = float(stats.norm.ppf(1 - (1 - level) / 2))
    share = successes / total
    centre = share + z * z / (2 * total)
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    scale = 1 + z * z / total
    return (centre - spread) / scale, (centre + spread) / scale


def newcombe_paired(
    both: int, only_first: int, only_second: int, neither: int, level: float = LEVEL
) -> tuple[float, float]:
    """Newcombe's (1998) method 10 for the difference of two paired proportions, in
    points: each proportion's Wilson interval, combined with the correlation of the
    pair (its phi coefficient, shrunk towards 0 by n/2 when positive). It keeps within
    [-100, 100] and stays sensible with few discordant images, where a Wald interval
    collapses to a point."""
    total = both + only_first + only_second + neither
    first_wrong, second_wrong = both + only_first, both + only_second
    first, second = first_wrong / total, second_wrong / total
    low1, high1 = wilson(first_wrong, total, level)
    low2, high2 = wilson(second_wrong, total, level)
    margins = first_wrong * (total - first_wrong) * second_wrong * (total - second_wrong)
    phi = 0.0
    if margins > 0:
        cross = both * neither - only_first * only_second
        shrunk = cross - total / 2 if cross > total / 2 else min(cross, 0)
        phi = shrunk / math.sqrt(margins)
    difference = first - second
    below = _combined(first - low1, high2 - second, phi)
    above = _combined(high1 - first, second - low2, phi)
    return 100.0 * (difference - below), 100.0 * (difference + above)


def _combined(one: float, other: float, phi: float) -> float:
    return math.sqrt(max(0.0, one * one - 2 * phi * one * other + other * other))


def _t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    mean = float(values.mean())
    half = t_half_width(values, level) if values.size > 1 else 0.0
    return 100.0 * (mean - half), 100.0 * (mean + half)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p values: the family-wise error over all of them stays
    at the level where each adjusted value is compared with it."""
    values = np.asarray(pvalues, dtype=float)
    adjusted = np.empty_like(values)
    running = 0.0
    for rank, index in enumerate(np.argsort(values, kind="stable")):
        running = max(running, min(1.0, (len(values) - rank) * values[index]))
        adjusted[index] = running
    return adjusted


# -- the verdict -----------------------------------------------------------------------


def agreement(
    error: float, low: float, high: float, reference: float, tolerance: float
) -> tuple[bool, str]:
    """Whether the published number lies in the cell's interval widened by ``tolerance``
    points (hardware and library noise); if not, by how much the cell is higher or lower,
    in points and in standard errors of the cell."""
    if low - tolerance <= reference <= high + tolerance:
        return True, "agrees"
    difference = error - reference
    direction = "higher" if difference > 0 else "lower"
    errors = abs(difference) / standard_error(low, high)
    return False, f"{direction} by {abs(difference):.2f} points, {errors:.1f} SE"
