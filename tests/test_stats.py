"""abt_eval.stats against hand computations: Student-t quantiles and tails (closed forms for 1 and 2
degrees of freedom, printed tables otherwise), the interval, the paired t-test, the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from abt_eval import stats


def test_t_quantile_matches_closed_forms_and_tables():
    # df = 1 is the Cauchy distribution: q(p) = tan(pi (p - 1/2)).
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    # df = 2: q(p) = (2p - 1) sqrt(2 / (1 - (2p - 1)^2)).
    a = 2 * 0.975 - 1
    assert stats.t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-9)
    # Printed t tables (two-sided 95 %): 2.776 (4), 2.262 (9), 2.045 (29); the normal's 1.960 far out.
    for df, table in [(4, 2.776), (9, 2.262), (29, 2.045)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-stats.t_quantile(0.975, 4))
    assert stats.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_two_sided_tail_matches_closed_forms():
    for t in (0.3, 1.0, 2.5, 12.0):
        assert stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
        assert stats.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert stats.t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert stats.t_two_sided_p(stats.t_quantile(0.975, 7), 7) == pytest.approx(0.05, rel=1e-9)


def test_mean_interval_by_hand():
    # 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half-width = t(0.975, 2) * 0.1 / sqrt(3) = 4.3027 * 0.057735
    iv = stats.mean_interval([0.5, 0.6, 0.7])
    assert iv.mean == pytest.approx(0.6) and iv.n == 3
    assert iv.half_width == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.6 - iv.half_width, 0.6 + iv.half_width))
    one = stats.mean_interval([0.4])
    assert one.mean == 0.4 and one.half_width is None and one.low is None
    assert stats.mean_interval([0.3, 0.3]).half_width == 0.0
    with pytest.raises(ValueError):
        stats.mean_interval([])


def test_paired_t_test_worked_example():
    # Seeds 42, 43, 44: model 0.60 0.62 0.58, baseline 0.40 0.41 0.45. Differences 0.20 0.21 0.13:
    # mean 0.18, s = sqrt((0.02² + 0.03² + 0.05²) / 2) = sqrt(0.0019), se = s / sqrt(3), t = 0.18 / se,
    # two-sided p with 2 degrees of freedom = 1 - t / sqrt(2 + t²).
    r = stats.paired_t_test([0.60, 0.62, 0.58], [0.40, 0.41, 0.45])
    se = math.sqrt(0.0019) / math.sqrt(3)
    t = 0.18 / se
    assert r.n == 3 and r.mean_diff == pytest.approx(0.18)
    assert r.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert (r.low, r.high) == pytest.approx((0.18 - 4.302653 * se, 0.18 + 4.302653 * se), rel=1e-6)
    assert r.verdict == "better" and r.method == "paired t over 3 seeds"
    # Reversed: worse, same p.
    back = stats.paired_t_test([0.40, 0.41, 0.45], [0.60, 0.62, 0.58])
    assert back.verdict == "worse" and back.p_value == pytest.approx(r.p_value)


def test_paired_t_test_sees_through_seed_noise_that_intervals_do_not():
    # Each seed moves both by the same amount: unpaired intervals overlap, the pairing tells them apart.
    noise = [0.0, 0.08, -0.07, 0.05]
    base = [0.50 + n for n in noise]
    model = [b + d for b, d in zip(base, [0.010, 0.012, 0.009, 0.011])]
    a, b = stats.mean_interval(model), stats.mean_interval(base)
    assert a.low < b.high  # overlapping intervals
    assert stats.paired_t_test(model, base).verdict == "better"


def test_paired_t_test_indistinguishable_and_degenerate_cases():
    r = stats.paired_t_test([0.50, 0.55, 0.45], [0.52, 0.50, 0.47])
    assert r.verdict == "indistinguishable at 95%" and r.low < 0 < r.high and 0.05 < r.p_value <= 1
    one = stats.paired_t_test([0.6], [0.4])
    assert (one.mean_diff, one.low, one.p_value) == (pytest.approx(0.2), None, None)
    assert one.verdict == "indistinguishable at 95%"
    same = stats.paired_t_test([0.5, 0.6], [0.5, 0.6])
    assert (same.p_value, same.verdict) == (1.0, "indistinguishable at 95%")
    shifted = stats.paired_t_test([0.6, 0.7], [0.5, 0.6])  # every difference exactly 0.1
    assert shifted.p_value == 0.0 and shifted.verdict == "better"
    with pytest.raises(ValueError):
        stats.paired_t_test([0.5, 0.6], [0.5])


def test_paired_bootstrap_over_clips():
    # 50 clips: the model is right on all, the baseline on 40: difference 0.2 on every resample's mean
    # of a mix of 0s and 1s; the interval excludes 0 and every resample is above 0.
    model, base = np.ones(50), np.r_[np.ones(40), np.zeros(10)]
    r = stats.paired_bootstrap(model, base, n_boot=500, seed=1)
    assert r.mean_diff == pytest.approx(0.2) and 0.0 < r.low < 0.2 < r.high
    assert r.p_value == 0.0 and r.verdict == "better" and r.method == "paired bootstrap over 50 clips"
    assert stats.paired_bootstrap(model, base, n_boot=500, seed=1) == r  # seeded
    # Identical outcomes: every resampled difference is 0.
    same = stats.paired_bootstrap(base, base, n_boot=200)
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    assert same.verdict == "indistinguishable at 95%"
    # Each right where the other is wrong, equally often: indistinguishable, p near 1.
    a = np.tile([1.0, 0.0], 30)
    r = stats.paired_bootstrap(a, 1.0 - a, n_boot=2000, seed=0)
    assert r.mean_diff == 0.0 and r.low < 0 < r.high and r.p_value > 0.5
    # Several seeds: a resample's statistic is the mean over seeds and clips.
    two = stats.paired_bootstrap([[1, 1, 0, 0], [1, 1, 1, 0]], [[0, 1, 0, 0], [0, 1, 0, 0]], n_boot=100)
    assert two.mean_diff == pytest.approx((0.25 + 0.5) / 2) and two.n == 4
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 0], [1, 0, 1])


def test_agrees_with_scipy_where_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (3, 5, 17):
        assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)
    a, b = [0.61, 0.66, 0.58, 0.7, 0.64], [0.55, 0.6, 0.6, 0.62, 0.57]
    ref = scipy_stats.ttest_rel(a, b)
    assert stats.paired_t_test(a, b).p_value == pytest.approx(float(ref.pvalue), rel=1e-8)
