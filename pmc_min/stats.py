"""The two statistics TOFU's headline numbers need, written out.

- `ks_2samp`: the two-sided two-sample Kolmogorov-Smirnov test. Its p-value
  is TOFU's forget quality. The p-value is exact: the share of the
  C(n+m, n) monotone lattice paths from (0, 0) to (n, m) that leave the band
  |i/n - j/m| < D, counted in integers. This is the null distribution scipy's
  `ks_2samp` computes (method "exact", its choice for samples of up to
  10,000), where scipy sums the same counts in floating point.
- `harmonic_mean`: TOFU's model utility is the harmonic mean of 9 numbers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def ks_statistic(x, y) -> float:
    """D = max_t |F_x(t) - F_y(t)| over the pooled sample (empirical CDFs, ties counted right-continuously)."""
    x, y = np.sort(np.asarray(x, dtype=float)), np.sort(np.asarray(y, dtype=float))
    pooled = np.concatenate([x, y])
    gap = np.searchsorted(x, pooled, side="right") / len(x) - np.searchsorted(y, pooled, side="right") / len(y)
    return float(np.abs(gap).max())


def paths_inside(n: int, m: int, bound: int) -> int:
    """Monotone lattice paths from (0, 0) to (n, m) whose every point (i, j) has |i*m - j*n| < bound."""
    row = [1] + [0] * m  # row[j]: paths to (i, j) staying inside, for the current i
    for j in range(1, m + 1):
        row[j] = row[j - 1] if j * n < bound else 0
    for i in range(1, n + 1):
        row[0] = row[0] if i * m < bound else 0
        for j in range(1, m + 1):
            row[j] = row[j] + row[j - 1] if abs(i * m - j * n) < bound else 0
    return row[m]


def ks_2samp(x, y) -> tuple[float, float]:
    """(D, p): the two-sided two-sample KS statistic and its exact p-value P(D' >= D) under the
    null hypothesis that both samples come from one continuous distribution."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise ValueError("the KS test needs two non-empty samples")
    d = ks_statistic(x, y)
    g = math.gcd(n, m)
    h = round(d * (n // g) * m)  # D = h / lcm(n, m), as an integer
    if h == 0:
        return 0.0, 1.0
    total = math.comb(n + m, n)
    p = Fraction(total - paths_inside(n, m, h * g), total)  # |i/n - j/m| >= D  <=>  |i*m - j*n| >= h*g
    return h / ((n // g) * m), float(p)


def harmonic_mean(values) -> float:
    """n / sum(1/v) of positive numbers; 0 when any of them is 0 (as scipy.stats.hmean)."""
    values = [float(v) for v in values]
    if any(v < 0 for v in values):
        raise ValueError("the harmonic mean is defined here for non-negative numbers")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)
