"""Small, pure statistics for results and reports: how sure a score is, and whether two cells differ.

- ``accuracy_stderr``: lmms-eval's rule (``lmms_eval/api/metrics.py``, ``mean_stderr``: ``sample_stddev(arr) /
  sqrt(len(arr))``, the sample standard deviation with n - 1), on 0/1 outcomes, in percentage points.
- ``wilson_interval``: the Wilson score interval of a proportion (better than mean ± 1.96·stderr near 0 or 100%
  and for small n), in percent.
- ``mean_interval``: mean, standard error (n - 1) and the normal-approximation interval mean ± z·stderr (the VCG
  judge scores).
- ``paired_bootstrap_diff``: the difference of two means on the same items and its percentile bootstrap interval
  (items resampled with replacement, the same draw for both: the pairing is kept).
- ``mcnemar_exact_p``: the exact two-sided McNemar test, a binomial test with p = 1/2 on the discordant pairs,
  summed with ``math.comb`` (exact integers, no scipy).
- ``holm_adjust``: Holm's step-down adjustment of a family of p-values.
- ``compare_paired``: all of the above for two cells' per-item correctness on the same item ids.

Everything takes plain Python sequences; ``numpy`` is used only for the bootstrap's generator. (Not named
``prunevid/stats.py``: importing such a submodule would replace the package's ``prunevid.stats(model)``.)
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

Z95 = 1.959963984540054          # the standard normal's 97.5% quantile: two-sided 95%
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_BLOCK = 1_000                   # resamples drawn per call (bounded memory; fixed, so the stream is reproducible)


def _sample_sd(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (divides by n - 1); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def accuracy_stderr(outcomes: Sequence) -> Optional[float]:
    """Standard error of an accuracy in percentage points: 100 · sd(outcomes, n - 1) / √n over 0/1 outcomes
    (True/False count as 1/0), lmms-eval's ``mean_stderr``. None for fewer than 2 outcomes (n - 1 = 0)."""
    xs = [1.0 if o else 0.0 for o in outcomes]
    sd = _sample_sd(xs)
    return None if sd is None else 100.0 * sd / math.sqrt(len(xs))


def wilson_interval(correct: int, total: int, z: float = Z95) -> Optional[List[float]]:
    """Wilson score interval of ``correct`` / ``total`` in percent, ``[low, high]``; None when ``total`` is 0.

    centre = (p + z²/2n) / (1 + z²/n), half-width = z / (1 + z²/n) · √(p(1-p)/n + z²/4n²)."""
    if total <= 0:
        return None
    if not 0 <= correct <= total:
        raise ValueError(f"correct={correct} outside 0..total={total}")
    p = correct / total
    z2 = z * z
    denom = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return [100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)]


def mean_interval(values: Sequence[float], z: float = Z95) -> Tuple[Optional[float], Optional[float],
                                                                     Optional[List[float]]]:
    """(mean, stderr, [mean - z·stderr, mean + z·stderr]) of ``values``; stderr = sd(n - 1) / √n. The mean is None
    for no values; stderr and interval are None for fewer than 2 (a normal approximation, not clipped)."""
    xs = [float(v) for v in values]
    if not xs:
        return None, None, None
    mean = sum(xs) / len(xs)
    sd = _sample_sd(xs)
    if sd is None:
        return mean, None, None
    se = sd / math.sqrt(len(xs))
    return mean, se, [mean - z * se, mean + z * se]


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> Tuple[float, List[float]]:
    """(mean(a) - mean(b), [low, high]): the observed difference of two paired samples (``a[i]`` and ``b[i]``
    are the same item) and its percentile bootstrap interval. Each resample draws n item indices with
    replacement (``numpy.random.default_rng(seed).integers``, in blocks of 1,000 resamples) and takes the mean
    of ``a - b`` over them; the interval is the (1 - level)/2 and (1 + level)/2 quantiles of those means
    (numpy's default linear interpolation). Same inputs and seed, same interval. Units are the inputs' (0/1
    outcomes: fractions; multiply by 100 for percentage points)."""
    import numpy as np
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("no items to compare")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _BLOCK):
        size = min(_BLOCK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        means[start:start + size] = d[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), [float(low), float(high)]


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs (item right in one run only, either
    way): under "no difference" each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 · Σ_{i=0}^{min(b,c)} C(b+c, i) / 2^(b+c)); 1 when there is no discordant pair."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)          # int / int: exact, rounded once


def holm_adjust(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjustment, in the input order: with the m p-values sorted ascending, the i-th smallest
    (1-based) becomes max over j <= i of min(1, (m - j + 1) · p_(j)). None entries (no test) stay None and do not
    count in m."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: List[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def compare_paired(cell: Dict[str, bool], reference: Dict[str, bool], n_resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> dict:
    """A cell against the reference on the same items: ``cell`` and ``reference`` map item id -> correct. Returns
    ``n``, ``diff`` (accuracy difference, cell - reference, percentage points), ``diff_ci95`` (paired bootstrap,
    percentage points), ``b`` (right here, wrong in the reference), ``c`` (the other way) and ``p`` (exact McNemar).
    Raises ValueError when the item ids differ or there are none."""
    if set(cell) != set(reference):
        raise ValueError(f"the runs scored different items ({len(cell)} vs {len(reference)} ids, "
                         f"{len(set(cell) ^ set(reference))} not in both)")
    ids = sorted(cell)
    if not ids:
        raise ValueError("no items to compare")
    a = [1.0 if cell[i] else 0.0 for i in ids]
    r = [1.0 if reference[i] else 0.0 for i in ids]
    diff, (low, high) = paired_bootstrap_diff(a, r, n_resamples=n_resamples, seed=seed)
    b = sum(1 for x, y in zip(a, r) if x > y)
    c = sum(1 for x, y in zip(a, r) if x < y)
    return {"n": len(ids), "diff": 100 * diff, "diff_ci95": [100 * low, 100 * high], "b": b, "c": c,
            "p": mcnemar_exact_p(b, c)}
