"""The table's statistics (piggyback.report.statistics) against scipy, hand counts and a
published example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from piggyback.report.statistics import (
    agreement,
    cell_interval,
    clopper_pearson,
    holm,
    newcombe_paired,
    paired_comparison,
    standard_error,
)


@pytest.mark.parametrize(
    ("errors", "images"), [(0, 200), (200, 200), (1, 200), (43, 200), (1043, 5794)]
)
def test_the_interval_of_one_run_is_scipys_exact_binomial_interval(errors, images):
    expected = stats.binomtest(errors, images).proportion_ci(0.95, method="exact")
    low, high = clopper_pearson(errors, images)
    assert low == pytest.approx(100 * expected.low, abs=1e-9)
    assert high == pytest.approx(100 * expected.high, abs=1e-9)
    assert cell_interval([errors], images) == (low, high)


def test_no_errors_and_all_errors_reach_the_ends_of_the_scale():
    assert clopper_pearson(0, 200)[0] == 0.0 and clopper_pearson(0, 200)[1] > 0
    assert clopper_pearson(200, 200)[1] == 100.0 and clopper_pearson(200, 200)[0] < 100


def test_runs_add_their_spread_to_the_test_set_sampling_in_quadrature():
    """Three runs at 40, 50 and 60 errors of 200 images (20, 25, 30%): the test-set part
    is the interval of 50 errors in 200 (the runs share the images), the training part
    t(0.975, 2) * 5 / sqrt(3) points."""
    test_low, test_high = clopper_pearson(50, 200)
    spread = 4.302652729749464 * 5.0 / math.sqrt(3)
    low, high = cell_interval([40, 50, 60], 200)
    assert low == pytest.approx(25 - math.hypot(25 - test_low, spread), abs=1e-6)
    assert high == pytest.approx(25 + math.hypot(test_high - 25, spread), abs=1e-6)


def test_runs_that_agree_keep_the_test_set_interval_which_more_runs_do_not_shrink():
    one = cell_interval([50], 200)
    assert cell_interval([50, 50], 200) == pytest.approx(one)
    assert cell_interval([50] * 10, 200) == pytest.approx(one)


def _outcomes(both: int, only_method: int, only_baseline: int, neither: int):
    """Per-image wrong/right of a method and the baseline from the four counts."""
    method = [True] * both + [True] * only_method + [False] * only_baseline + [False] * neither
    baseline = [True] * both + [False] * only_method + [True] * only_baseline + [False] * neither
    return np.array([method]), np.array([baseline])


def test_mcnemar_and_the_paired_interval_of_a_hand_counted_table():
    """Cavo et al. (2012) as Fagerland, Lydersen and Laake's book gives it (161 pairs;
    59 both, 6 first only, 16 second only, 80 neither): Newcombe's interval of the
    difference is -0.1186 to -0.0046. The exact McNemar p: 2 * sum_{k<=6} C(22, k) / 2^22
    = 2 * 110056 / 4194304."""
    method, baseline = _outcomes(59, 6, 16, 80)
    paired = paired_comparison(method, baseline)
    assert (paired.worse, paired.better, paired.images) == (6, 16, 161)
    assert paired.difference == pytest.approx(100 * (6 - 16) / 161)
    assert paired.low == pytest.approx(-11.86, abs=0.005)
    assert paired.high == pytest.approx(-0.46, abs=0.005)
    assert paired.p == pytest.approx(2 * 110056 / 4194304, abs=1e-12)
    swapped = paired_comparison(baseline, method)
    assert (swapped.low, swapped.high) == pytest.approx((-paired.high, -paired.low))
    assert swapped.p == pytest.approx(paired.p)


def test_a_paired_interval_with_no_discordant_images_is_not_a_point():
    low, high = newcombe_paired(10, 0, 0, 190)
    assert low < 0 < high
    assert paired_comparison(*_outcomes(10, 0, 0, 190)).p == 1.0


def test_several_runs_pool_per_image_and_test_the_images_that_differ():
    """Two runs each on six images. Per image, the method's mean error minus the
    baseline's: +1, +0.5, +0.5, 0, -0.5, 0; the sign test on the four that differ, three
    worse and one better: p = 2 * (1 + 4) / 16."""
    method = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 0, 0]], dtype=bool)
    baseline = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]], dtype=bool)
    paired = paired_comparison(method, baseline)
    differences = np.array([1, 0.5, 0.5, 0, -0.5, 0])
    assert (paired.worse, paired.better) == (3, 1)
    assert paired.difference == pytest.approx(100 * differences.mean())
    assert paired.p == pytest.approx(2 * 5 / 16)
    half = stats.t.ppf(0.975, 5) * differences.std(ddof=1) / math.sqrt(6)
    assert (paired.low, paired.high) == pytest.approx(
        (100 * (differences.mean() - half), 100 * (differences.mean() + half))
    )


def test_holm_on_a_constructed_family():
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, each at least the one before."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert (adjusted < 0.05).tolist() == [True, False, False, True]
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(
    ("reference", "agrees", "text"),
    [
        (22.0, True, "agrees"),  # inside the interval
        (26.05, True, "agrees"),  # outside it, within the tolerance
        (26.3, False, "lower by 6.30 points"),  # above the widened interval: we are lower
        (13.8, False, "higher by 6.20 points"),  # below it
    ],
)
def test_the_verdict_widens_the_interval_by_the_tolerance(reference, agrees, text):
    error, low, high, tolerance = 20.0, 14.0, 26.0, 0.1
    verdict = agreement(error, low, high, reference, tolerance)
    assert verdict[0] is agrees
    assert verdict[1].startswith(text)
    if not agrees:
        errors = abs(error - reference) / standard_error(low, high)
        assert verdict[1].endswith(f", {errors:.1f} SE")
        assert standard_error(low, high) == pytest.approx(12.0 / (2 * 1.959963984540054))
