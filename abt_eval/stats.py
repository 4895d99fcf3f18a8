"""Small statistics for scores over probe seeds: Student-t intervals, paired t-tests, a paired bootstrap.

Written out here (a continued fraction for the incomplete beta function, bisection for the quantile)
so that ``abt_eval`` needs no scipy: heareval's tools happen to bring it, the ``eval`` extra does not.
Every difference is oriented so that positive means "better" (the caller flips lower-is-better metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95
BETTER, WORSE = "better", "worse"


def indistinguishable(level: float = LEVEL) -> str:
    return f"indistinguishable at {level:.0%}"


# --------------------------------------------------------------------------------------------------
# Student's t distribution
# --------------------------------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (e.g. ``t_quantile(0.975, 4)`` = 2.776), by bisection."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail = 2.0 * (1.0 - p)  # the two-sided tail mass beyond the quantile
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


# --------------------------------------------------------------------------------------------------
# Intervals and paired comparisons
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the half-width of its Student-t interval (None below 2 values)."""

    mean: float
    half_width: float | None
    n: int
    level: float = LEVEL

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{(1+level)/2, n-1} · s / sqrt(n), s the sample standard deviation (n - 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, n, level)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n), n, level)


def verdict(low: float | None, high: float | None, level: float = LEVEL) -> str:
    """ "better" when the interval of (model - reference) lies above 0, "worse" below, else indistinguishable."""
    if low is not None and low > 0:
        return BETTER
    if high is not None and high < 0:
        return WORSE
    return indistinguishable(level)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison, ``model - reference`` (positive: the model is better)."""

    method: str  # "paired t over N seeds" or "paired bootstrap over N clips"
    n: int
    mean_diff: float
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str


def paired_t_test(model: Sequence[float], reference: Sequence[float], level: float = LEVEL) -> Comparison:
    """Paired t-test of ``model[i] - reference[i]`` (the same probe seed i for both).

    With one pair there is no spread to test against: no interval, no p-value, "indistinguishable".
    Differences that are all equal and non-zero have no spread either: p = 0 (the sign is certain).
    """
    if len(model) != len(reference) or not model:
        raise ValueError(
            f"paired_t_test needs two equal non-empty lists, got {len(model)} and {len(reference)}"
        )
    diffs = [a - b for a, b in zip(model, reference)]
    iv = mean_interval(diffs, level)
    method = f"paired t over {len(diffs)} seeds"
    if iv.half_width is None:
        return Comparison(method, iv.n, iv.mean, None, None, None, indistinguishable(level))
    sd = iv.half_width / t_quantile((1.0 + level) / 2.0, iv.n - 1) * math.sqrt(iv.n)
    if sd == 0.0:
        p = 1.0 if iv.mean == 0.0 else 0.0
    else:
        p = t_two_sided_p(iv.mean / (sd / math.sqrt(iv.n)), iv.n - 1)
    return Comparison(method, iv.n, iv.mean, iv.low, iv.high, p, verdict(iv.low, iv.high, level))


def paired_bootstrap(model, reference, n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> Comparison:
    """Paired bootstrap over test clips: resample clips (the same ones for both) ``n_boot`` times.

    ``model``, ``reference``: per-clip scores (e.g. 1.0 = correct), shape (clips,) or (seeds, clips);
    with seeds, a resample's statistic is the mean over seeds and clips. Percentile interval; the
    two-sided p-value is twice the smaller share of resampled differences on either side of 0.
    """
    import numpy as np

    a = np.atleast_2d(np.asarray(model, dtype=np.float64))
    b = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"paired_bootstrap needs equal non-empty shapes, got {a.shape} and {b.shape}")
    per_clip = (a - b).mean(axis=0)  # a resample's statistic is the mean of these over its clips
    n = per_clip.size
    rng = np.random.default_rng(seed)
    stats = per_clip[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    p = min(1.0, 2.0 * min(float(np.mean(stats <= 0.0)), float(np.mean(stats >= 0.0))))
    return Comparison(
        f"paired bootstrap over {n} clips",
        n,
        float(per_clip.mean()),
        float(low),
        float(high),
        p,
        verdict(float(low), float(high), level),
    )
