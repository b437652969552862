"""Is the difference real? Confidence intervals over seeds, and paired tests between groups that differ in one key.

Every number comes from scipy.stats: a bootstrap over seeds for the intervals (of a group's mean, of a pair's mean
difference), a paired test for the p-value (an exact sign-flip permutation test for the few seeds a sweep has,
Wilcoxon's signed-rank test beyond), and the probability of improvement P(a better than b) over every pair of
seeds (Mann-Whitney's U / (n * m), as in Agarwal et al. 2021, rliable).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer: "not enough seeds", never a number
BOOTSTRAP_RESAMPLES = 9999
EXACT_PERMUTATION_SEEDS = 10  # up to this many pairs the sign-flip test enumerates all 2**n flips
RANDOM_STATE = 0  # the bootstrap's resampling is seeded: the same runs give the same intervals

IDENTICAL, NOT_ENOUGH_SEEDS = "identical", "not enough seeds"


def mean_interval(values: Sequence[float]) -> Optional[Tuple[float, float]]:
    """The 95 % bootstrap interval (BCa) of the mean over seeds; None with fewer than MIN_SEEDS values."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < MIN_SEEDS or not np.all(np.isfinite(data)):
        return None
    if np.all(data == data[0]):  # no spread: the bootstrap has nothing to resample
        return float(data[0]), float(data[0])
    from scipy.stats import bootstrap

    result = bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                       method="BCa", random_state=RANDOM_STATE)
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates on a few tied values: percentile then
        low, high = bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                              method="percentile", random_state=RANDOM_STATE).confidence_interval
    return float(low), float(high)


def curve_band(curves: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The 95 % bootstrap (percentile) band of the mean curve of several seeds (rows), epoch by epoch."""
    if curves.shape[0] < MIN_SEEDS or not np.all(np.isfinite(curves)):
        return None
    from scipy.stats import bootstrap

    spread = np.ptp(curves, axis=0) > 0
    low, high = curves[0].copy(), curves[0].copy()
    if spread.any():
        result = bootstrap((curves[:, spread],), np.mean, axis=0, confidence_level=CONFIDENCE,
                           n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", random_state=RANDOM_STATE)
        low[spread], high[spread] = result.confidence_interval
    return low, high


@dataclass
class PairedDifference:
    """a − b over matching seeds of one summary: its mean, interval, p-value, P(a better) and the verdict."""

    n_seeds: int
    mean_diff: Optional[float]
    ci95: Optional[Tuple[float, float]]
    p_value: Optional[float]
    p_improvement: Optional[float]  # P(a better than b), over every pair of seeds
    verdict: str  # identical, not enough seeds, a better, b better, no clear difference

    def as_json(self) -> Dict:
        return {"n_seeds": self.n_seeds, "mean_diff": self.mean_diff, "ci95": list(self.ci95) if self.ci95 else None,
                "p_value": self.p_value, "p_improvement": self.p_improvement, "verdict": self.verdict}


def paired_difference(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> PairedDifference:
    """a − b seed by seed (a[i] and b[i] share a seed)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diffs = x - y
    if len(diffs) and np.all(diffs == 0):  # bit-identical twins (fit and tape): no test, no p-value of 1
        return PairedDifference(len(diffs), 0.0, (0.0, 0.0), None, None, IDENTICAL)
    if len(diffs) < MIN_SEEDS or not np.all(np.isfinite(diffs)):
        return PairedDifference(len(diffs), None, None, None, None, NOT_ENOUGH_SEEDS)
    interval = mean_interval(diffs)
    p_value = paired_p_value(diffs)
    p_better = improvement_probability(x, y, higher_is_better)
    low, high = interval
    if low > 0 or high < 0:
        a_better = (low > 0) == higher_is_better
        verdict = "a better" if a_better else "b better"
    else:
        verdict = "no clear difference"
    return PairedDifference(len(diffs), float(np.mean(diffs)), interval, p_value, p_better, verdict)


def paired_p_value(diffs: np.ndarray) -> float:
    """Two-sided p-value of a zero mean difference: an exact sign-flip permutation test for few seeds, else
    Wilcoxon's signed-rank test."""
    from scipy.stats import permutation_test, wilcoxon

    if len(diffs) <= EXACT_PERMUTATION_SEEDS:
        result = permutation_test((diffs,), np.mean, permutation_type="samples", alternative="two-sided",
                                  n_resamples=np.inf)
        return float(result.pvalue)
    return float(wilcoxon(diffs).pvalue)


def improvement_probability(a: np.ndarray, b: np.ndarray, higher_is_better: bool) -> float:
    """P(a better than b) over every pair of their seeds, ties counting half: Mann-Whitney's U / (n * m)."""
    from scipy.stats import mannwhitneyu

    better, worse = (a, b) if higher_is_better else (b, a)
    return float(mannwhitneyu(better, worse).statistic / (len(a) * len(b)))


def one_key_pairs(params: Sequence[Dict[str, str]], ignored) -> List[Tuple[int, int, str]]:
    """(i, j, key) for every two groups whose params differ in exactly one key (`ignored` keys left out)."""
    pairs = []
    for i in range(len(params)):
        for j in range(i + 1, len(params)):
            keys = {k for k in set(params[i]) | set(params[j])
                    if not ignored(k) and params[i].get(k) != params[j].get(k)}
            options = {k[: -len(".name")] for k in keys if k.endswith(".name")}  # an option's name stands for its keys
            keys = {k for k in keys if k.endswith(".name") or not any(k.startswith(o + ".") for o in options)}
            if len(keys) == 1:
                pairs.append((i, j, keys.pop()))
    return pairs
